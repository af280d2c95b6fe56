"""Real `chaos run`s of the four experiments: detection power, holds, and abort.

An experiment that cannot fail proves nothing. Against the weakened checkout (the first
version: ``CHECKOUT_RESILIENCE=0``; for payments-response-lost, payments retrying the
provider with a fresh idempotency key) each experiment must report the deviation or abort;
against the fixed checkout each must hold; with a deliberately tight abort threshold each
must be interrupted by its safeguard with its fault reverted. The tight-threshold runs are
made twice: with the Chaos Toolkit of this virtualenv and with the newest one the registry
serves (Python 3.12, ``make setup-ctk-latest``), and their journals must agree. Each class
brings up its own stack (port base ``CHAOSCHECKOUT_TEST_RUNS_PORT_BASE``, default 29100).
Slow: about 18 minutes in all, on purpose (real windows of 30 s, real load); experiment 4
adds two runs (~75 s each) and one stack (the fresh-key payments).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from chaoscheckout.faults.kinds import KINDS
from chaoscheckout.faults.leases import LeaseStore
from chaoscheckout.runner import Outcome, run_experiments
from chaoscheckout.runtime.registry import load_registry
from chaoscheckout.sli.prometheus import NoData, PrometheusClient

ROOT = Path(__file__).resolve().parent.parent
PORT_BASE = int(os.environ.get("CHAOSCHECKOUT_TEST_RUNS_PORT_BASE", "29100"))
STATE_DIR = Path(f"/var/tmp/chaoscheckout-runs-{PORT_BASE}")
CTK_LATEST_CHAOS = ROOT / ".venv-ctk-latest" / "bin" / "chaos"
# (experiment, "installed" | "newest") -> what a tight-threshold abort recorded, compared below
ABORT_RECORDS: dict[tuple[str, str], dict] = {}
FAULT_FUNCS = tuple(kind.inject for kind in KINDS.values())  # the fault-kind table's inject actions
BITE_PROBE = "wait-until-postgres-refuses-an-order-write"  # fill-pg-disk's wait for its effect


def _manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stack.manage", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=240, check=False)


def _stack(extra: dict[str, str]) -> Iterator[dict[str, str]]:
    env = dict(os.environ)
    env.update(CHAOSCHECKOUT_STATE_DIR=str(STATE_DIR), CHAOSCHECKOUT_PORT_BASE=str(PORT_BASE),
               PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}", **extra)
    _manage(env, "down")
    up = _manage(env, "up")
    if up.returncode != 0:
        _manage(env, "down")
        pytest.fail(f"stack up failed:\n{up.stdout}\n{up.stderr}")
    try:
        yield env
    finally:
        _manage(env, "down")


def _run(env: dict[str, str], name: str, tmp_path: Path, chaos: Path | None = None,
         **extra: str) -> tuple[Outcome, dict]:
    run_env = {k: v for k, v in env.items() if k.startswith(("CHAOSCHECKOUT_", "PATH"))}
    if chaos is not None:  # its own k6 and entry points come first
        run_env["PATH"] = f"{chaos.parent}:{run_env.get('PATH', '')}"
    run_env.update(extra)
    _wait_for_a_clean_slo_window(env)
    (outcome,) = run_experiments([ROOT / "experiments" / f"{name}.json"], tmp_path, report=False,
                                 env=run_env, cwd=ROOT, chaos=str(chaos) if chaos else None)
    journal = json.loads(outcome.journal.read_text())
    print(f"\n{outcome.line()}")
    return outcome, journal


def _wait_for_a_clean_slo_window(env: dict[str, str], timeout_s: float = 45) -> None:
    """Runs follow each other on one stack: the steady-state probes read the last 30 s, so the
    previous run's faulted tail (errors, slow requests) must have left that window first. Waits
    until the 30 s window holds no error and its p95 (if any traffic) is under the SLO."""
    registry = load_registry(Path(env["CHAOSCHECKOUT_STATE_DIR"]) / "services.json")
    prometheus = PrometheusClient(str(registry.prometheus_url), timeout_s=5)
    deadline = time.monotonic() + timeout_s
    while True:
        errors = prometheus.query('sum(increase(checkout_requests_total{outcome="error"}[30s]))')
        try:
            p95_ms = prometheus.value("checkout:latency_seconds:p95_30s") * 1000
        except NoData:
            p95_ms = 0.0
        if (not errors or errors[0].value < 0.5) and p95_ms < 300:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"the SLO window never cleared after the previous run: {errors} errors, "
                        f"p95 {p95_ms:.0f} ms")
        time.sleep(1)


def _no_fault_left(env: dict[str, str], settle_s: float = 20) -> None:
    """No lease is live and every service is healthy again (a restarted service may spend a
    few seconds in supervisord's STARTING state after it already answers /healthz)."""
    assert LeaseStore(Path(env["CHAOSCHECKOUT_STATE_DIR"]) / "leases").live() == []
    deadline = time.monotonic() + settle_s
    while True:
        status = _manage(env, "status", "--json")
        if status.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert status.returncode == 0, status.stdout + status.stderr


def _fault_index(journal: dict) -> int:
    return next(i for i, r in enumerate(journal["run"]) if r["activity"]["provider"]["func"] in FAULT_FUNCS)


def _fault_output(journal: dict) -> dict:
    (fault,) = [r for r in journal["run"] if r["activity"]["provider"]["func"] in FAULT_FUNCS]
    assert fault["status"] == "succeeded", fault
    return fault["output"]


@pytest.fixture(scope="class")
def weak() -> Iterator[dict[str, str]]:
    """A stack running the first-version checkout (every resilience setting off)."""
    yield from _stack({"CHECKOUT_RESILIENCE": "0"})


@pytest.fixture(scope="class")
def weak_fresh() -> Iterator[dict[str, str]]:
    """Like ``weak``, brought up fresh: no earlier run has left room in the orders table."""
    yield from _stack({"CHECKOUT_RESILIENCE": "0"})


@pytest.fixture(scope="class")
def weak_payments() -> Iterator[dict[str, str]]:
    """A stack whose payments retries a lost provider answer with a FRESH idempotency key."""
    yield from _stack({"PAYMENTS_RETRY_FRESH_KEY": "1"})


@pytest.fixture(scope="class")
def fixed() -> Iterator[dict[str, str]]:
    """A stack running the checkout with its default (fixed) settings."""
    yield from _stack({})


class TestWeakenedCheckoutIsCaught:
    """Detection power: the first-version checkout fails each experiment."""

    def test_kill_catalog_catches_no_price_fallback(self, weak, tmp_path):
        outcome, journal = _run(weak, "kill-catalog", tmp_path)
        assert outcome.verdict in ("broke", "aborted"), outcome.reason
        breach = (journal["chaoscheckout_safety"].get("abort") or {}).get("first_breach") or {}
        after = journal["steady_states"].get("after") or {}
        assert breach.get("guard") == "availability_guard" or after.get("steady_state_met") is False
        _no_fault_left(weak)

    def test_payments_latency_catches_no_timeout_budget(self, weak, tmp_path):
        outcome, journal = _run(weak, "payments-latency", tmp_path)
        assert outcome.verdict == "broke", outcome.reason
        assert "checkout-p95-latency-ms-30s" in outcome.reason
        assert _fault_output(journal)["backend"] == "proxy"
        checkout = journal["chaoscheckout_provenance"]["services"]["checkout"]  # what was tested, from itself
        assert checkout["profile"] == "first-version" and checkout["settings"]["budget_s"] == 0
        _no_fault_left(weak)



class TestWeakenedCheckoutFullDisk:
    """Detection power of fill-pg-disk, on a stack of its own: a full disk bites Postgres only
    when it needs a new block, and the pages a table already holds (a burst of inserts makes
    Postgres extend it by many at once) are room it keeps writing into. A stack whose earlier
    runs left such room can take more than the observation window to refuse a write; the
    experiment waits for the first refused write (at most CHAOSCHECKOUT_BITE_TIMEOUT_S)."""

    def test_fill_pg_disk_catches_charge_before_order(self, weak_fresh, tmp_path):
        outcome, journal = _run(weak_fresh, "fill-pg-disk", tmp_path)
        [bite] = [r for r in journal["run"] if r["activity"]["name"] == BITE_PROBE]
        print(f"first refused order write: {bite['output']}")
        assert bite["status"] == "succeeded" and bite["output"]["increased"] is True, bite
        assert outcome.verdict in ("broke", "aborted"), outcome.reason
        abort = journal["chaoscheckout_safety"].get("abort") or {}
        after = journal["steady_states"].get("after") or {}
        assert (abort.get("first_breach") or {}).get("guard") == "money_guard" \
            or after.get("steady_state_met") is False
        _no_fault_left(weak_fresh)


class TestWeakenedPaymentsIsCaught:
    """Detection power of experiment 4: payments that retries a lost provider answer with a
    fresh idempotency key charges some orders twice, and the experiment says so."""

    def test_payments_response_lost_catches_fresh_key_retries(self, weak_payments, tmp_path):
        outcome, journal = _run(weak_payments, "payments-response-lost", tmp_path)
        assert outcome.verdict in ("broke", "aborted"), outcome.reason
        breach = (journal["chaoscheckout_safety"].get("abort") or {}).get("first_breach") or {}
        after = journal["steady_states"].get("after") or {}
        doubled = [p for p in after.get("probes", []) if p["activity"]["name"] == "orders-charged-twice"]
        assert breach.get("guard") == "double_charge_guard" or (doubled and not doubled[0]["tolerance_met"])
        fault = _fault_output(journal)
        assert fault["kind"] == "response_loss" and fault["target"] == "provider"
        payments = journal["chaoscheckout_provenance"]["services"]["payments"]  # what was tested, from itself
        assert payments["settings"]["retry_fresh_key"] is True
        print(f"caught by: {breach.get('guard') or 'steady state after'}")
        _no_fault_left(weak_payments)


class TestFixedCheckoutHolds:
    """The fixed checkout (default settings) holds each experiment; tight thresholds abort."""

    @pytest.mark.parametrize("name", ["kill-catalog", "payments-latency", "fill-pg-disk",
                                      "payments-response-lost"])
    def test_holds(self, fixed, tmp_path, name):
        outcome, journal = _run(fixed, name, tmp_path)
        assert outcome.verdict == "held", outcome.reason
        assert journal["chaoscheckout_load"]["summary"]["requests"] > 0
        assert journal["chaoscheckout_provenance"]["services"]["checkout"]["profile"] == "resilient"
        if name == "fill-pg-disk":  # how long Postgres kept writing into room it already held
            [bite] = [r["output"] for r in journal["run"] if r["activity"]["name"] == BITE_PROBE]
            print(f"first refused order write: {bite}")
        if name == "payments-response-lost":  # the fault bit: responses were really lost
            [effect] = [r["output"] for r in journal["run"]
                        if r["activity"]["name"] == "how-many-provider-responses-were-lost"]
            print(f"response loss effect: {effect}")
            assert effect["responses_lost"] > 0, effect
        _no_fault_left(fixed)

    @pytest.mark.parametrize("ctk", ["installed", pytest.param("newest", marks=pytest.mark.ctk_latest)])
    @pytest.mark.parametrize("name, knob", [
        ("kill-catalog", "CHAOSCHECKOUT_ABORT_MAX_P95_MS"),
        ("payments-latency", "CHAOSCHECKOUT_ABORT_MAX_P99_MS"),
        ("fill-pg-disk", "CHAOSCHECKOUT_ABORT_MAX_P95_MS"),
    ])
    def test_tight_threshold_aborts_and_reverts(self, fixed, tmp_path, name, knob, ctk):
        chaos = None
        if ctk == "newest":
            if not CTK_LATEST_CHAOS.exists():
                pytest.skip("no newest-Chaos-Toolkit virtualenv: `make setup-ctk-latest` needs Python 3.12")
            chaos = CTK_LATEST_CHAOS
        outcome, journal = _run(fixed, name, tmp_path, chaos=chaos, **{knob: "1"})
        ABORT_RECORDS[(name, ctk)] = _abort_record(outcome, journal)
        assert outcome.verdict == "aborted", outcome.reason
        assert journal["status"] == "interrupted"
        abort = journal["chaoscheckout_safety"]["abort"]
        assert abort["first_breach"]["guard"] == "latency_guard"
        fault_id = _fault_output(journal)["fault_id"]
        assert fault_id in abort["first_breach"]["reverted"], abort
        print(f"{name}: first breach -> fault reverted in {abort['breach_to_revert_s']} s")
        assert abort["breach_to_revert_s"] < 5
        _no_fault_left(fixed)

    @pytest.mark.ctk_latest
    @pytest.mark.parametrize("name", ["kill-catalog", "payments-latency", "fill-pg-disk"])
    def test_newest_chaos_toolkit_records_the_same_abort(self, name):
        """The journal, the revert and the abort record agree between the two Chaos Toolkits."""
        if not CTK_LATEST_CHAOS.exists():
            pytest.skip("no newest-Chaos-Toolkit virtualenv: `make setup-ctk-latest` needs Python 3.12")
        missing = [ctk for ctk in ("installed", "newest") if (name, ctk) not in ABORT_RECORDS]
        if missing:
            pytest.fail(f"the tight-threshold run of {name} did not complete under: {missing}")
        installed, newest = ABORT_RECORDS[(name, "installed")], ABORT_RECORDS[(name, "newest")]
        print(f"\n{name}: installed {installed.pop('versions')} / newest {newest.pop('versions')}")
        assert newest == installed


# top-level journal keys that only newer Chaos Toolkits write (chaostoolkit-addons 0.12's
# `safeguards`, chaostoolkit 1.21's `interruption`)
NEWER_CTK_KEYS = {"safeguards", "interruption"}


def _abort_record(outcome: Outcome, journal: dict) -> dict:
    """What must not depend on the Chaos Toolkit version in an aborted run's journal."""
    safety = journal.get("chaoscheckout_safety") or {}
    abort = safety.get("abort") or {}
    breach = abort.get("first_breach") or {}
    fault = _fault_output(journal)
    return {
        "versions": (journal.get("chaoslib-version"), journal.get("platform", "")[:40]),
        "verdict": outcome.verdict,
        "status": journal["status"],
        "journal_keys": sorted(set(journal) - NEWER_CTK_KEYS),
        "fault_keys": sorted(fault),
        # up to the fault: where the interruption lands after it (the wait for the fault's
        # effect or the pause after it) is timing, and an activity it cuts has no status
        "run": [(r["activity"]["name"], r.get("status")) for r in journal["run"][:_fault_index(journal) + 1]],
        "rollbacks": [(r["activity"]["name"], r["status"]) for r in journal["rollbacks"]],
        "safety_keys": sorted(safety),
        "abort_keys": sorted(abort),
        "breach_keys": sorted(breach),
        "guard": breach.get("guard"),
        "fault_reverted_at_breach": fault["fault_id"] in breach.get("reverted", []),
        "reverted_within_5s": (abort.get("breach_to_revert_s") or 99) < 5,
        "load_stopped_by": (journal.get("chaoscheckout_load") or {}).get("stopped_by"),
    }
