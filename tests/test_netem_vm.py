"""Real tc netem, verified inside a QEMU VM (issue 7).

This machine's kernel has no ``sch_netem``, so the netem latency backend is exercised in a
VM running Debian's kernel under software emulation (``-accel tcg``). The image is built
(or reused from its content-hash cache) by ``tests/vm/build.py``; ``tests/vm/guest/guest.py``
runs inside it and calls the
real ``chaoscheckout.network.actions.add_latency(..., backend="netem")`` on the stack's
real payments service (in its own network namespace, charging through the real provider),
``remove_latency`` and the real reaper. See docs/netem.md.

A cold image build takes minutes (debootstrap + wheels); a cached one seconds. Run with
``pytest -s tests/test_netem_vm.py`` to watch progress.
"""

from __future__ import annotations

import builtins
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import pytest


def _load_harness():
    """tests/vm/harness.py, imported by path (tests/ is not a package)."""
    path = Path(__file__).resolve().parent / "vm" / "harness.py"
    spec = importlib.util.spec_from_file_location("ccvm_harness", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["ccvm_harness"] = module
    spec.loader.exec_module(module)
    return module


_harness = _load_harness()
boot, load_build_module, qemu_usable = _harness.boot, _harness.load_build_module, _harness.qemu_usable

DELAY_MS = 100
JITTER_MS = 10
SAMPLES = 15
LEASE_S = 10
BOOT_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def vm_run(pytestconfig):
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")

    def print(*args, **kwargs):  # noqa: A001 - progress reaches the terminal even without -s
        with capture.global_and_fixture_disabled():
            builtins.print(*args, **kwargs)
            sys.stdout.flush()

    reason = qemu_usable()
    if reason:
        print(f"[vm] SKIP: {reason}")
        pytest.skip(reason)
    build = load_build_module()
    started = time.monotonic()
    with capture.global_and_fixture_disabled():  # the build prints its own progress
        image = build.build_image()
    print(f"[vm] image {'cached' if image.cached else 'built'} in {time.monotonic() - started:.1f} s: "
          f"{image.directory} (kernel {image.kernel_version})", flush=True)
    booted = boot(image, mode="package", delay_ms=DELAY_MS, jitter_ms=JITTER_MS, samples=SAMPLES,
                  lease_s=LEASE_S, timeout_s=BOOT_TIMEOUT_S,
                  progress=lambda line: print(line, flush=True))
    out_dir = Path(os.environ.get("CHAOSCHECKOUT_TEST_STATE_DIR", "/var/tmp")) / "netem-vm"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "console.log").write_text(booted.console)
    (out_dir / "result.json").write_text(json.dumps(booted.result, indent=2, default=str))
    for name, run in ((booted.result or {}).get("chaos_runs") or {}).items():
        if run and run.get("journal"):  # the in-VM `chaos run` journal, as netem evidence
            (out_dir / f"journal-{name}.json").write_text(json.dumps(run["journal"], indent=2))
    print(f"[vm] console and result kept in {out_dir}", flush=True)
    tail = booted.console[-3000:]
    assert not booted.timed_out, f"VM did not finish within {BOOT_TIMEOUT_S} s; console:\n{tail}"
    assert booted.result is not None, f"no result from the guest; console:\n{booted.console[-3000:]}"
    result = booted.result
    print(_summary(result, booted, image))
    return result


def test_guest_ran_every_step_without_error(vm_run):
    assert vm_run["errors"] == [], "\n".join(vm_run["errors"])
    failed = [name for name, step in vm_run["steps"].items() if not step["ok"]]
    assert failed == []
    assert vm_run["modprobe"] == {"sch_netem": "ok", "veth": "ok"}


def test_add_latency_uses_netem_in_the_payments_namespace_only(vm_run):
    injected = vm_run["inject"]
    assert injected["backend"] == "netem"
    assert injected["parameters"]["netns"] == "payments"
    assert injected["parameters"]["devices"] == ["veth-pay"]
    qdiscs = vm_run["qdiscs_injected"]
    assert qdiscs["netem_in_netns"] == 1, qdiscs
    assert qdiscs["netem_in_root"] == 0, qdiscs
    assert any(f"delay {DELAY_MS}ms" in line or "delay 100ms" in line for line in qdiscs["netns"]), qdiscs


def test_netem_adds_the_configured_delay_to_a_round_trip(vm_run):
    base = vm_run["baseline"]["request_ms_median"]
    slow = vm_run["with_netem"]["request_ms_median"]
    added = slow - base
    # a fresh-connection request is 2 round trips (connect, then request/response); netem
    # delays the payments side's egress once per round trip: expected ≈ 2 × delay
    expected = 2 * DELAY_MS
    print(f"[vm] payments median {base:.1f} ms -> {slow:.1f} ms with netem: +{added:.1f} ms "
          f"(expected ≈ {expected} ms)")
    assert added >= 0.8 * expected, f"added {added:.1f} ms < 80 % of {expected} ms"
    # netem applied twice (e.g. on both ends) would double it
    assert added <= 2 * 2 * (DELAY_MS + JITTER_MS), f"added {added:.1f} ms: far more than configured"


def test_netem_slows_a_real_payment_through_the_provider(vm_run):
    base = vm_run["baseline_post"]["request_ms_median"]
    slow = vm_run["with_netem_post"]["request_ms_median"]
    added = slow - base
    # caller <-> payments: 2 round trips; payments -> provider leaves the namespace too (≈ +1
    # delay on a kept-alive connection): ≈ 3 × delay, at least the caller's 2 × delay
    print(f"[vm] POST /payments median {base:.1f} ms -> {slow:.1f} ms with netem: +{added:.1f} ms")
    assert added >= 0.8 * 2 * DELAY_MS, f"a payment only {added:.1f} ms slower under netem"
    back = vm_run["after_revert_post"]["request_ms_median"] - base
    assert back < 0.5 * DELAY_MS, f"payments still {back:.1f} ms slower after remove_latency"


def test_netem_on_payments_does_not_slow_other_services(vm_run):
    base = vm_run["control_baseline"]["request_ms_median"]
    during = vm_run["control_with_netem"]["request_ms_median"]
    # netem leaking to catalog would add ≈ 2 × delay; half a delay leaves room for emulation noise
    assert during - base < 0.5 * DELAY_MS, f"catalog went from {base:.1f} to {during:.1f} ms"


def test_remove_latency_leaves_zero_netem_qdiscs(vm_run):
    assert vm_run["revert"]["reverted"], vm_run["revert"]
    assert vm_run["revert"]["netem_removed"] == ["veth-pay"]
    qdiscs = vm_run["qdiscs_after_revert"]
    assert qdiscs["netem_in_netns"] == 0, qdiscs
    assert qdiscs["netem_in_root"] == 0, qdiscs
    assert vm_run["leases_after_revert"] == []
    back = vm_run["after_revert"]["request_ms_median"] - vm_run["baseline"]["request_ms_median"]
    assert back < 0.5 * DELAY_MS, f"still {back:.1f} ms slower after remove_latency"


def test_dead_man_switch_removes_netem_after_the_injectors_sigkill(vm_run):
    """The injector (a library caller: its process is the fault's owner) is SIGKILLed right
    after add_latency: the reaper's dead-man switch removes netem within seconds, well before
    the lease would have expired."""
    lease = vm_run["lease"]
    assert lease["injected"]["backend"] == "netem"
    assert lease["child_returncode"] == -9
    assert len(lease["leases_before_kill"]) == 1
    assert lease["removed_at"] is not None, f"netem still there; reaper log:\n{lease['reaper_log_tail']}"
    after_kill, after_expiry = lease["removed_after_kill_s"], lease["removed_after_expiry_s"]
    print(f"[vm] reaper removed netem {after_kill:.2f} s after the owner's SIGKILL "
          f"({-after_expiry:.2f} s before its {LEASE_S} s lease would have expired)")
    assert after_kill <= 5, f"netem removed only {after_kill:.2f} s after the owner died"
    assert after_expiry < 0, "removed at lease expiry, not by the dead-man switch"
    assert lease["qdiscs_after_expiry"]["netem_in_netns"] == 0
    assert lease["qdiscs_after_expiry"]["netem_in_root"] == 0
    assert lease["leases_after_expiry"] == []


def _summary(result, booted, image) -> str:
    def med(key):
        return (result.get(key) or {}).get("request_ms_median")

    return json.dumps({
        "image_cached": image.cached, "image_build_s": image.build_s,
        "qemu_wall_s": booted.wall_s, "init_up_uptime_s": booted.init_up_uptime_s,
        "guest_harness_s": result.get("elapsed_s"),
        "payments_ms": {"baseline": med("baseline"), "netem": med("with_netem"),
                        "after_revert": med("after_revert")},
        "payments_post_ms": {"baseline": med("baseline_post"), "netem": med("with_netem_post"),
                             "after_revert": med("after_revert_post")},
        "catalog_ms": {"baseline": med("control_baseline"), "netem": med("control_with_netem")},
        "reaper_after_expiry_s": (result.get("lease") or {}).get("removed_after_expiry_s"),
        "errors": result.get("errors"),
    }, indent=2)


def test_chaos_run_in_the_vm_injects_netem_measures_it_and_leaves_nothing(vm_run):
    run = vm_run["chaos_runs"]["netem-in-vm"]
    journal = run["journal"]
    assert journal is not None, run["stderr_tail"]
    assert run["returncode"] == 0, run["stderr_tail"]
    assert journal["status"] == "completed" and journal["deviated"] is False
    before = {p["activity"]["name"]: p["output"] for p in journal["steady_states"]["before"]["probes"]}
    assert journal["steady_states"]["before"]["steady_state_met"] is True, before
    assert journal["steady_states"]["after"]["steady_state_met"] is True
    method = {r["activity"]["name"]: r for r in journal["run"]}
    assert all(r["status"] == "succeeded" for r in method.values()), method
    assert method["netem-100ms-on-payments"]["output"]["backend"] == "netem"
    live = method["latency-fault-on-payments"]["output"]
    assert [q["device"] for q in live["netem"]] == ["veth-pay"], live
    slower = method["payments-round-trip-ms-during-netem"]["output"] - before["payments-round-trip-ms"]
    catalog = method["catalog-round-trip-ms-during-netem"]["output"] - before["catalog-round-trip-ms"]
    print(f"[vm] chaos run: payments +{slower:.1f} ms, catalog {catalog:+.1f} ms during netem "
          f"(run {run['duration_s']} s)")
    assert slower >= 0.8 * 2 * DELAY_MS, f"payments only {slower:.1f} ms slower under netem"
    assert catalog < DELAY_MS, f"catalog {catalog:.1f} ms slower: netem leaked beyond payments"
    assert method["remove-netem-from-payments"]["output"]["netem_removed"] == ["veth-pay"]
    assert all(r["status"] == "succeeded" for r in journal["rollbacks"])
    assert run["qdiscs_after"]["netem_in_netns"] == 0 and run["qdiscs_after"]["netem_in_root"] == 0
    assert run["leases_after"] == []
