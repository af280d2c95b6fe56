"""SLI probes against the real stack: real Prometheus, real k6 load, real provider and Postgres."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from chaoslib.exceptions import ActivityFailed
from serviceprocs import wait_until

from chaoscheckout.errors import InvalidFaultArgument
from chaoscheckout.load.k6 import K6Options, K6Process
from chaoscheckout.sli import probes
from chaoscheckout.sli.prometheus import NoData
from chaoscheckout.sli.timeline import collect_timeline

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def loaded(stack) -> Iterator[K6Process]:
    """load/baseline.js at 10 req/s through the real checkout, running for the module's tests."""
    k6 = K6Process(K6Options(ROOT / "load" / "baseline.js", rate=10, duration_s=90,
                             checkout_url=stack.registry.extra["checkout_url"],
                             run_dir=stack.state_dir / "load" / f"test-sli-{time.time():.0f}"))
    k6.start()
    try:
        k6.wait_for_traffic(20)
        k6.hold(12)  # > the 10 s window, so the 10 s rules have a full window of traffic
        yield k6
    finally:
        k6.stop()
    assert not k6.running()


def test_availability_and_latency_are_real_values_under_load(loaded: K6Process) -> None:
    availability_rule = probes.checkout_availability("10s")
    availability_30s = probes.checkout_availability("30s")
    availability_raw = probes.checkout_availability("15s")  # raw expression, no rule
    assert 0.99 <= availability_rule <= 1.0
    assert 0.99 <= availability_30s <= 1.0 and 0.99 <= availability_raw <= 1.0
    p95 = probes.checkout_latency_ms(0.95, "10s")
    p99 = probes.checkout_latency_ms(0.99, "10s")
    p90_raw = probes.checkout_latency_ms(0.9, "15s")
    assert 0 < p95 <= p99 < 2000, (p95, p99)
    assert 0 < p90_raw < 2000
    # k6 sends 10/s; the 30 s window starts before the load did, so the rate climbs as the
    # load fills it (about 12 s of it so far): wait for it to reach half, never above 15
    rates: list[float] = []

    def rate_filled_half_the_window() -> bool:
        rates.append(probes.prometheus_value("checkout:requests:rate_30s"))
        assert rates[-1] <= 15, rates
        return rates[-1] >= 5

    wait_until(rate_filled_half_the_window, timeout_s=40, what="the 30 s rate to reach 5/s",
               interval_s=0.5)


def test_range_and_timeline_cover_the_load(loaded: K6Process) -> None:
    now = time.time()
    points = probes.prometheus_range("checkout:availability:ratio_10s", now - 10, now, 1)
    assert len(points) >= 8 and all(v is None or 0.99 <= v <= 1.0 for _, v in points)

    def p95_samples() -> list[float]:
        timeline = collect_timeline(loaded.started_at, time.time())
        assert "error" not in timeline
        return [v for _, v in timeline["series"]["p95_ms_10s"] if v is not None]

    # the p95 rule has values from the first scrapes with traffic on (k6's start-up comes
    # first): wait until the load has 8 of them, within the load's 90 s
    wait_until(lambda: len(p95_samples()) >= 8, 30, "8 p95 samples in the timeline", interval_s=1.0)
    p95 = p95_samples()
    assert len(p95) >= 8 and all(0 < v < 2000 for v in p95)


def test_no_data_is_a_clear_failure_not_a_pass(stack) -> None:
    with pytest.raises(NoData, match="no data"):
        probes.prometheus_value("checkout_requests_total_that_does_not_exist")
    with pytest.raises(NoData, match="NaN"):
        probes.prometheus_value("vector(0) / vector(0)")  # what 0/0 requests looks like
    with pytest.raises(ActivityFailed, match="returned .* series"):
        probes.prometheus_value('up{job=~".+"}')


def test_unreachable_prometheus_fails_fast() -> None:
    started = time.monotonic()
    with pytest.raises(ActivityFailed, match="unreachable"):
        probes.checkout_availability(configuration={"prometheus_url": "http://127.0.0.1:9",
                                                    "chaoscheckout_io_timeout_s": 2})
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("kwargs", [{"window": "30"}, {"window": "-1s"}, {"window": 30},
                                    {"quantile": 1.5}, {"quantile": 0}])
def test_bad_arguments_rejected(kwargs) -> None:
    func = probes.checkout_latency_ms if "quantile" in kwargs else probes.checkout_availability
    with pytest.raises(InvalidFaultArgument):
        func(**kwargs, configuration={"prometheus_url": "http://127.0.0.1:9"})


def test_wait_for_increase_sees_a_rising_counter_and_times_out_on_a_flat_one(loaded: K6Process) -> None:
    rising = probes.wait_for_increase("sum(checkout_requests_total)", timeout_s=20, interval_s=0.5)
    assert rising["increased"] is True and rising["after"] > rising["before"], rising
    assert rising["waited_s"] < 20
    # no order write fails under plain load: the series is there at 0 (so increase() sees the
    # first failure) and never rises; the wait gives up at its timeout and says so
    flat = probes.wait_for_increase('sum(checkout_store_write_errors_total{kind="refused"})',
                                    timeout_s=3, interval_s=0.5)
    assert flat["increased"] is False and flat["before"] == flat["after"] == 0, flat
    assert 3 <= flat["waited_s"] < 6


@pytest.mark.parametrize("func, arguments, started", [
    ("wait_for_increase", {"query": "vector(0)", "timeout_s": 60, "interval_s": 0.2}, "waiting up to 60s"),
    ("observe", {"seconds": 60}, "observing for 60s"),
])
def test_sigterm_while_waiting_for_an_effect_ends_the_run_at_once(stack, tmp_path, func, arguments,
                                                                  started) -> None:
    """chaoslib turns SIGTERM inside a Python activity into that activity's failure and runs
    on; the wait and the observation window end the run instead, as SIGTERM in a pause does."""
    experiment = {
        "version": "1.0.0", "title": "a wait that never sees its effect", "description": "test",
        "configuration": {"prometheus_url": str(stack.registry.prometheus_url)},
        "method": [{"type": "probe", "name": "wait-for-nothing", "provider": {
            "type": "python", "module": "chaoscheckout.sli.probes", "func": func, "arguments": arguments}},
            {"type": "probe", "name": "after-the-wait", "provider": {
                "type": "python", "module": "chaoscheckout.sli.guards", "func": "unix_time"}}],
    }
    path, journal = tmp_path / "wait.json", tmp_path / "journal.json"
    path.write_text(json.dumps(experiment))
    log = tmp_path / "chaos.log"
    proc = subprocess.Popen([str(Path(sys.executable).parent / "chaos"), "--no-version-check", "--log-file",
                             str(log), "run", "--journal-path", str(journal), str(path)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: log.exists() and started in log.read_text(), timeout_s=60,
                   what="the wait to start")
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        ended_after = time.monotonic() - signalled
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    raw = json.loads(journal.read_text())
    print(f"run ended {ended_after:.2f} s after SIGTERM, status {raw['status']}")
    assert raw["status"] == "interrupted", raw["status"]
    assert [r["activity"]["name"] for r in raw["run"]] == ["wait-for-nothing"]  # nothing ran after it
    assert ended_after < 10


@pytest.mark.parametrize("kwargs", [{"query": ""}, {"timeout_s": 0}, {"timeout_s": 601},
                                    {"timeout_s": True}, {"timeout_s": 5, "interval_s": 6},
                                    {"interval_s": 0}])
def test_wait_for_increase_rejects_bad_arguments_before_reading(kwargs) -> None:
    arguments = {"query": "sum(up)", **kwargs}
    with pytest.raises(InvalidFaultArgument):
        probes.wait_for_increase(**arguments, configuration={"prometheus_url": "http://127.0.0.1:9"})


@pytest.mark.parametrize("seconds", [-1, 601, "soon", None, True, float("nan")])
def test_observe_rejects_bad_seconds(seconds) -> None:
    with pytest.raises(InvalidFaultArgument, match="seconds"):
        probes.observe(seconds)


def test_observe_holds_and_says_so() -> None:
    started = time.monotonic()
    assert probes.observe("0.5") == {"held_s": 0.5}
    assert time.monotonic() - started >= 0.5


def test_wait_for_increase_fails_clearly_without_data(stack) -> None:
    with pytest.raises(ActivityFailed, match="at the start"):
        probes.wait_for_increase("checkout_requests_total_that_does_not_exist", timeout_s=1)


def test_money_probe_counts_a_charge_without_order_after_grace(loaded: K6Process, stack) -> None:
    since_s = time.time() - loaded.started_at + 5  # only charges made during this module's load
    grace_s = 3
    # under real checkout traffic every captured charge has its order
    assert probes.charges_without_order(grace_s=grace_s, since_s=since_s) == 0
    details = probes.charges_without_order_details(grace_s=grace_s, since_s=since_s)
    assert details["count"] == 0 and details["checked"] >= 50, details

    ref = str(uuid.uuid4())  # a charge taken directly at the provider: no order exists for it
    resp = httpx.post(f"{stack.registry.extra['provider_url']}/charges", timeout=5,
                      json={"idempotency_key": f"test-sli-{ref}", "order_ref": ref, "amount_cents": 1234})
    assert resp.status_code == 200, resp.text
    since_s += 1
    within_grace = probes.charges_without_order_details(grace_s=grace_s, since_s=since_s)
    assert within_grace["count"] == 0 and ref not in within_grace["order_refs"]
    time.sleep(grace_s + 0.5)
    after = probes.charges_without_order_details(grace_s=grace_s, since_s=since_s + grace_s + 1)
    assert after["count"] == 1 and after["order_refs"] == [ref] and after["amount_cents"] == 1234
    assert probes.charges_without_order(grace_s=grace_s, since_s=since_s + grace_s + 1) == 1


def test_money_probe_fails_clearly_when_postgres_is_unreachable(stack) -> None:
    configuration = {"database_url": "postgresql://postgres@127.0.0.1:9/checkout",
                     "chaoscheckout_io_timeout_s": 2}
    ref = str(uuid.uuid4())
    httpx.post(f"{stack.registry.extra['provider_url']}/charges", timeout=5,
               json={"idempotency_key": f"test-sli-pg-{ref}", "order_ref": ref, "amount_cents": 1})
    time.sleep(0.2)
    started = time.monotonic()
    with pytest.raises(ActivityFailed, match="cannot read orders from Postgres"):
        probes.charges_without_order(grace_s=0, since_s=60, configuration=configuration)
    assert time.monotonic() - started < 5


def test_money_probe_rejects_bad_arguments() -> None:
    for grace_s, since_s in ((-1, 60), (10, 5), ("5", 60)):
        with pytest.raises(InvalidFaultArgument):
            probes.charges_without_order(grace_s=grace_s, since_s=since_s)



def test_double_charge_probe_and_guard_count_an_order_charged_twice(loaded: K6Process, stack) -> None:
    from chaoscheckout.sli import guards

    since_s = time.time() - loaded.started_at + 5
    assert probes.double_charges(since_s=since_s) == 0  # real checkout traffic: one charge per order
    assert probes.double_charges_details(since_s=since_s)["checked"] >= 50
    started = time.time()  # from now: a margin before it took in the last test's charge
    ref = str(uuid.uuid4())
    for key in ("first", "retried-with-a-fresh-key"):
        resp = httpx.post(f"{stack.registry.extra['provider_url']}/charges", timeout=5,
                          json={"idempotency_key": f"test-sli-{key}-{ref}", "order_ref": ref,
                                "amount_cents": 700})
        assert resp.status_code == 200, resp.text
    details = probes.double_charges_details(since=started)
    assert details["count"] == 1 and details["order_refs"] == [ref] and details["extra_amount_cents"] == 700
    assert len(details["charges"][ref]) == 2
    guards.reset()
    try:
        assert guards.double_charge_guard(since=started) is False
        assert [b["guard"] for b in guards.breaches()] == ["double_charge_guard"]
    finally:
        guards.reset()
    with pytest.raises(InvalidFaultArgument):
        probes.double_charges(since_s=-1)
    with pytest.raises(ActivityFailed, match="not judged"):
        probes.double_charges(since=time.time() + 30)  # an empty window (load runs now): never "0"


def test_guards_money_watch_reads_only_new_charges_and_agrees_with_the_full_check(loaded: K6Process,
                                                                                   stack) -> None:
    """sli/money_watch.py: a guard's polls under real load judge what the full check judges
    (an orphan charge, an order charged twice), each poll reading from the last cutoff."""
    from chaoscheckout.context import activity_context
    from chaoscheckout.sli import guards, money, money_watch

    ctx = activity_context(None)
    started = time.time()  # from now: a margin before it took in the last test's charge
    watch = money_watch.ChargeWatch(start=started, grace_s=1.0)
    doubles = money_watch.ChargeWatch(start=started)
    cutoffs = []
    for _ in range(3):
        time.sleep(1.0)
        check = money_watch.watch_charges_without_order(watch, ctx)
        assert check.judged and check.orphans == []
        assert money_watch.watch_double_charges(doubles, ctx).doubled == {}
        cutoffs.append(watch.cutoff)
    assert cutoffs == sorted(cutoffs) and cutoffs[-1] > cutoffs[0]  # each poll starts where the last ended

    ref = str(uuid.uuid4())  # taken at the provider twice, with no order: an orphan charged twice
    for key in ("first", "again-with-a-fresh-key"):
        resp = httpx.post(f"{stack.registry.extra['provider_url']}/charges", timeout=5,
                          json={"idempotency_key": f"test-watch-{key}-{ref}", "order_ref": ref,
                                "amount_cents": 300})
        assert resp.status_code == 200, resp.text
    time.sleep(1.5)
    check = money_watch.watch_charges_without_order(watch, ctx)
    full = money.find_charges_without_order(1.0, 600, ctx, since=started)
    assert {c.order_ref for c in check.orphans} == {c.order_ref for c in full.orphans} == {ref}
    assert abs(full.checked - check.checked) <= 100, (full.checked, check.checked)  # load goes on
    double = money_watch.watch_double_charges(doubles, ctx)
    assert list(double.doubled) == [ref] == list(money.find_double_charges(600, ctx, since=started).doubled)
    # the probes with ``since`` use the same watch: same answer, read from its cutoff
    assert set(probes.charges_without_order_details(grace_s=1, since=started)["order_refs"]) == {ref}
    assert money_watch.watch_for("money", started, 1.0).cutoff >= watch.cutoff
    guards.reset()
    try:
        assert guards.money_guard(grace_s=1, since=started) is False
        assert guards.double_charge_guard(since=started) is False
        assert [b["guard"] for b in guards.breaches()] == ["money_guard", "double_charge_guard"]
    finally:
        guards.reset()


def test_charge_windows_start_exactly_at_since(stack) -> None:
    """The provider's ``since`` has millisecond resolution; a window still starts exactly at
    the timestamp asked for (a charge captured 0.3 ms before it is out, one at it is in)."""
    from chaoscheckout.sli.money import _fetch_charges

    provider_url = stack.registry.extra["provider_url"]
    ref = str(uuid.uuid4())
    resp = httpx.post(f"{provider_url}/charges", timeout=5,
                      json={"idempotency_key": f"test-window-{ref}", "order_ref": ref, "amount_cents": 5})
    assert resp.status_code == 200, resp.text
    captured_at = float(resp.json()["captured_at"])
    at = [c.order_ref for c in _fetch_charges(provider_url, captured_at, 5)]
    after = [c.order_ref for c in _fetch_charges(provider_url, captured_at + 0.0003, 5)]
    assert ref in at and ref not in after
