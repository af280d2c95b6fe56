"""bench/interrupt.py's remote observer: reading the payments host's qdisc dump (fast tier).

The watcher on the payments host prints each dump as ``tc -j qdisc show``'s JSON list; the
bench decides from one line whether a netem qdisc is there, and an unreadable line is
"unknown" (never "gone")."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.fast

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("cc_bench_interrupt", ROOT / "bench" / "interrupt.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["cc_bench_interrupt"] = module
    spec.loader.exec_module(module)
    return module


# real `tc -j qdisc show` lines of payments' namespace on the VM (before, during, after the fault)
NONE = '[{"kind":"noqueue","handle":"0:","dev":"lo","root":true,"refcnt":2,"options":{}},' \
       '{"kind":"noqueue","handle":"0:","dev":"veth-pay","root":true,"refcnt":2,"options":{}}]'
NETEM = '[{"kind":"noqueue","handle":"0:","dev":"lo","root":true,"refcnt":2,"options":{}},' \
        '{"kind":"netem","handle":"8001:","dev":"veth-pay","root":true,"refcnt":2,' \
        '"options":{"limit":1000,"delay":{"delay":0.4,"jitter":0.05,"correlation":0},"ecn":false,"gap":0}}]'


def test_netem_present_and_absent(bench):
    assert bench.netem_in_tc_json(NETEM) is True
    assert bench.netem_in_tc_json(NONE) is False
    assert bench.netem_in_tc_json("[]") is False
    assert bench.netem_in_tc_json('[{"kind":"netem","dev":"veth-pay"}]') is True  # the watcher's short form


@pytest.mark.parametrize("line", ["", "error netlink", "error [Errno 110] timed out", "{}", "[1, 2]",
                                  '[{"kind":"netem"', "null"])
def test_unreadable_lines_are_unknown(bench, line):
    assert bench.netem_in_tc_json(line) is None


def test_vm_experiments_only_on_the_vm_runtime(bench, capsys):
    with pytest.raises(SystemExit):
        bench.main(["--runtime", "local", "--experiments", "payments-latency-netem"])
    assert "--runtime vm" in capsys.readouterr().err
