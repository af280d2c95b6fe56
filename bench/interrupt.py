"""Interruption benchmark: whatever ends a ``chaos run``, is its fault gone, and how fast?

    .venv/bin/python bench/interrupt.py [--trials-per-ending 2] [--endings sigint-pg,sigkill]
        [--experiments kill-catalog,payments-latency,fill-pg-disk] [--port-base 41700]
        [--state-dir /var/tmp/cc-bench-interrupt] [--use-running] [--seed N] [--json FILE]
        [--max-median-s 2] [--max-worst-s 5] [--round-robin] [--keep-logs DIR]
        [--runtime local|docker|both|vm] [--docker-port-base 41900] [--docker-state-dir DIR]
        [--docker-trials-per-ending N] [--warmup-s 6] [--stop-after-s S] [--no-steady-state-first]

Randomized trials of (shipped experiment x how the run ends x runtime). Each
trial starts ``chaos run`` of an experiment with short durations (configuration env:
``CHAOSCHECKOUT_LOAD_WARMUP_S`` etc.) in its own session, with SIGINT's default
disposition restored (a background job inherits SIGINT ignored), waits until the
fault's effect is seen FROM OUTSIDE the extension (catalog's health endpoint fails, and
on docker its container is not running; the fault proxy's control API shows a toxic on
payments, or a response-loss toxic on provider for ``payments-response-lost``, which
``--experiments`` may name but the default set leaves out; the ballast file exists in
Postgres' data dir, on docker in the host mount of the container's ``/data`` volume; on
the remote target, a netem qdisc in payments' namespace on the payments host),
waits a random 0.3-6 s, then ends the run one way:

- ``sigint-pg``: SIGINT to the process group (a terminal's Ctrl-C);
- ``sigterm``: SIGTERM to the pid; ``sigkill``: SIGKILL to the pid;
- ``sigkill-pg``: SIGKILL to the process group;
- ``sigstop``: SIGSTOP to the pid (a frozen run); SIGCONT once the effect is gone, then
  the run must notice it was declared dead and end.

A run whose steady state is not met before the method injects nothing: it is not
counted (``skipped`` in the table) and the trial is tried again, up to 3 times. It
measures the time from the signal to the effect gone (polled every 20 ms), counts k6
processes of the trial's session left 3 s after the run ended, and reads the journal's
status. Prints per runtime and ending: trials, faults left, median and worst
signal->gone seconds, k6 left, journal statuses. Exit 1 when a fault was left, a k6 survived, or the median /
worst time is over the bound (default 2 s / 5 s). Every wait is bounded.

``--runtime docker`` (or ``both``) brings up the docker stack (``stack.manage up --runtime
docker``, the host reaper beside it) on ``--docker-port-base`` (default ``--port-base`` +
200) and runs the experiments with ``CHAOSCHECKOUT_RUNTIME=docker``; a killed catalog is
gone when its container runs again and its health check passes.

``--runtime vm`` is the remote target: the local stack with payments on the QEMU VM
(``stack.manage up --remote-payments vm``, checkout's payments attempts widened to 2 s
for the emulated host as in tests/test_ssh_vm.py), and the experiment
``payments-latency-netem`` at 1 checkout/s: netem on payments' namespace on that host,
injected over ssh and held by a remote keeper (the owner-bound dead-man switch of a
remote fault). Its effect is read on the payments host itself: one ssh session (the
stack's key, the pinned known_hosts) runs a watcher there that dumps the namespace's
qdiscs over netlink (what ``tc qdisc show`` asks the kernel) every 0.1 s and prints each
dump as ``tc -j``'s JSON; "gone" is the first dump without netem that reaches this
machine (an upper bound: it includes the poll interval and the ssh transit). A stale or
unreadable reading counts as present. The stack (and the VM) is taken down at the end,
also when the bench is interrupted (SIGINT, SIGTERM).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from chaoscheckout.network.proxy_client import ProxyControl, ProxyError  # noqa: E402
from chaoscheckout.runtime.registry import RemoteSpec, load_registry  # noqa: E402
from chaoscheckout.runtime.ssh import ssh_argv  # noqa: E402

RUNTIMES = ("local", "docker", "vm")
ENDINGS = ("sigint-pg", "sigterm", "sigkill", "sigkill-pg", "sigstop")
EXPERIMENTS = ("kill-catalog", "payments-latency", "fill-pg-disk")
VM_EXPERIMENTS = ("payments-latency-netem",)  # the remote target: netem on the payments host
OBSERVABLE = (*EXPERIMENTS, "payments-response-lost", *VM_EXPERIMENTS)  # --experiments may name these
SHORT_ENV = {  # a trial takes ~15-25 s
    "CHAOSCHECKOUT_LOAD_WARMUP_S": "6",
    "CHAOSCHECKOUT_OBSERVE_S": "15",
    "CHAOSCHECKOUT_RECOVER_S": "3",
    "CHAOSCHECKOUT_FAULT_DURATION_S": "60",  # expiry must not be what reverts the fault
}
# the remote target (``--runtime vm``): payments on the QEMU guest of ``stack up --remote-payments
# vm``, one checkout a second (the emulated host cannot serve more: journals/FINDINGS.md), and
# checkout's payments attempts widened for it at ``stack up`` (as tests/test_ssh_vm.py does)
VM_ENV = {"CHAOSCHECKOUT_LOAD_RATE": "1"}
VM_STACK_ENV = {"CHECKOUT_PAYMENTS_TIMEOUT_S": "2", "CHECKOUT_BUDGET_S": "4"}
POLL_S = 0.02
ATTEMPTS = 3  # per planned trial, when the run ends before injecting (steady state not met)
INJECT_TIMEOUT_S = 60
VM_INJECT_TIMEOUT_S = 300  # inject over ssh: a preflight and a keeper, each a Python in the guest
GONE_TIMEOUT_S = 30
VM_GONE_TIMEOUT_S = 60  # a frozen run: the keeper's keeper_miss_s (5 s on the VM) and its revert
# the remote qdisc watcher: polls on the payments host; "stale" when no answer came for this long
WATCH_POLL_S = 0.1
WATCH_STALE_S = 2.0
WATCH_WAIT_S = 15.0


@dataclass
class Trial:
    experiment: str
    ending: str
    runtime: str = "local"
    injected: bool = False
    delay_s: float | None = None
    gone_after_s: float | None = None
    fault_left: bool = False
    k6_left: int = 0
    status: str | None = None
    note: str = ""
    extra: dict = field(default_factory=dict)


class Observer:
    """Sees each fault's effect from outside the extension."""

    def __init__(self, state_dir: Path, name: str | None = None) -> None:
        registry = load_registry(state_dir / "services.json")
        self.runtime = registry.runtime
        self.name = name or registry.runtime  # the table's runtime column (vm: a local registry)
        self.prometheus = registry.prometheus_url or f"http://{registry.service('prometheus').address}"
        self.catalog_health = registry.service("catalog").health_url
        self.proxy_url = registry.proxy_control_url
        pg = registry.service("postgres")
        self.catalog_container = self.docker = None
        remote = registry.services["payments"].remote if "payments" in registry.services else None
        self.qdiscs = QdiscWatch(remote) if remote is not None else None  # netem on the payments host
        if self.qdiscs is not None:
            self.qdiscs.start()
        self.inject_timeout_s = VM_INJECT_TIMEOUT_S if remote is not None else INJECT_TIMEOUT_S
        self.gone_timeout_s = VM_GONE_TIMEOUT_S if remote is not None else GONE_TIMEOUT_S
        if self.runtime == "docker":  # the container's state and the host mount of its /data volume
            import docker

            self.docker = docker.from_env(timeout=10)
            self.catalog_container = registry.service("catalog").process
            mounts = self.docker.containers.get(pg.process).attrs.get("Mounts", [])
            data = next(m["Source"] for m in mounts if m.get("Destination") == str(Path("/", pg.data_dir)))
            self.ballast = Path(data) / ".chaoscheckout-ballast"
        else:
            data_dir = Path(pg.data_dir)
            data_dir = data_dir if data_dir.is_absolute() else state_dir / data_dir
            self.ballast = data_dir / ".chaoscheckout-ballast"

    def effect_present(self, experiment: str) -> bool:
        if experiment == "payments-latency-netem":  # a netem qdisc in payments' namespace on its host
            if self.qdiscs is None:
                raise RuntimeError("payments-latency-netem needs payments on a remote host (--runtime vm)")
            return self.qdiscs.netem_present()
        if experiment == "kill-catalog":
            if self.docker is not None and not self._container_running(self.catalog_container):
                return True
            try:
                return not httpx.get(self.catalog_health, timeout=0.5).is_success
            except httpx.HTTPError:
                return True
        if experiment == "payments-latency":  # the control API is a unix socket: its own client
            try:
                return ProxyControl(self.proxy_url, 0.5).latency("payments") is not None
            except ProxyError:
                return False  # proxy unreachable: holds no toxic
        if experiment == "payments-response-lost":  # the proxy holds a response-loss toxic on provider
            try:
                return ProxyControl(self.proxy_url, 0.5).response_loss("provider") is not None
            except ProxyError:
                return False  # proxy unreachable: holds no toxic
        return self.ballast.exists()

    def observable(self) -> tuple[str, ...]:
        """The experiments whose effect this stack can show."""
        return tuple(e for e in OBSERVABLE if self.qdiscs is not None or e not in VM_EXPERIMENTS)

    def close(self) -> None:
        if self.qdiscs is not None:
            self.qdiscs.close()

    def _container_running(self, name: str) -> bool:
        import docker.errors

        try:
            container = self.docker.containers.get(name)
        except docker.errors.DockerException:
            return False
        return bool((container.attrs.get("State") or {}).get("Running"))

    def wait_no_recent_errors(self, warmup_s: float = 6.0, timeout_s: float = 45) -> None:
        """Until checkout's recent past holds no error and a p95 under 250 ms: the next run's
        steady state (30 s availability >= 0.99, p95 <= 300 ms, checked after its k6 warm-up)
        must not see the previous trial's fault. Its 30 s window starts ``30 - warmup_s`` s
        before its k6 does, so that much quiet (+ 5 s margin) is enough."""
        window = f"{max(5, round(35 - warmup_s))}s"
        checks = ((f'sum(increase(checkout_requests_total{{outcome="error"}}[{window}]))', 0.5),
                  (f"histogram_quantile(0.95, sum(rate(checkout_request_duration_seconds_bucket[{window}])) "
                   "by (le))", 0.25))

        def below(query: str, limit: float) -> bool:
            try:
                answer = httpx.get(f"{self.prometheus}/api/v1/query", params={"query": query},
                                   timeout=2).json()
            except (httpx.HTTPError, ValueError):
                return False
            result = answer.get("data", {}).get("result") or []
            value = float(result[0]["value"][1]) if result else 0.0
            return not value > limit  # NaN (no traffic) counts as quiet

        def quiet() -> bool:
            return all(below(query, limit) for query, limit in checks)

        start = time.monotonic()
        while time.monotonic() - start < timeout_s and not quiet():
            time.sleep(1)


# runs on the payments host over one ssh session (a fresh ssh call per check would cost seconds
# of the emulated guest's Python start-up; ``tc`` forked every 0.1 s took half of the guest's
# one vCPU): resolves payments' namespace from that host's registry, enters it (setns, as
# ``ip netns exec`` does) and dumps the qdiscs with the netlink request ``tc qdisc show`` makes
# (RTM_GETQDISC), every WATCH_POLL_S, printing each dump as ``tc -j qdisc show``'s JSON list
# (kind and dev); ends on its stdin's EOF (the bench gone) or after its deadline
QDISC_WATCHER = r"""
import ctypes, json, os, select, socket, struct, sys, time
from pathlib import Path
from chaoscheckout.runtime.registry import load_registry
netns = load_registry(Path(sys.argv[1]) / "services.json").service(sys.argv[2]).netns
if netns:  # enter payments' namespace (as `ip netns exec` does) before opening the socket
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    if ctypes.CDLL(None, use_errno=True).setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
        raise OSError(ctypes.get_errno(), f"setns {netns}")
poll_s, deadline = float(sys.argv[3]), time.monotonic() + float(sys.argv[4])
sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)  # NETLINK_ROUTE
sock.settimeout(5)
seq = 0
while time.monotonic() < deadline:
    seq += 1  # RTM_GETQDISC, NLM_F_REQUEST|NLM_F_DUMP; an empty tcmsg (all devices)
    sock.send(struct.pack("=LHHLL", 36, 38, 0x301, seq, 0) + struct.pack("=BxxxiLLL", 0, 0, 0, 0, 0))
    rows, done = [], False
    try:
        while not done:
            data, off = sock.recv(1 << 16), 0
            while off + 16 <= len(data) and not done:
                length, kind, _flags, mseq = struct.unpack_from("=LHHL", data, off)
                if mseq != seq and length >= 16:  # an answer to an earlier, timed-out dump
                    off += (length + 3) & ~3
                    continue
                if kind in (2, 3) or length < 16:  # NLMSG_ERROR, NLMSG_DONE
                    done = True
                    if kind == 2 and struct.unpack_from("=i", data, off + 16)[0] != 0:
                        rows = None
                    break
                ifindex, at = struct.unpack_from("=i", data, off + 20)[0], off + 36
                while at + 4 <= off + length:
                    alen, atype = struct.unpack_from("=HH", data, at)
                    if alen < 4:
                        break
                    if atype == 1:  # TCA_KIND
                        try:
                            dev = socket.if_indextoname(ifindex)
                        except OSError:
                            dev = str(ifindex)
                        rows.append({"kind": data[at + 4:at + alen].rstrip(b"\0").decode(), "dev": dev})
                    at += (alen + 3) & ~3
                off += (length + 3) & ~3
        print("error netlink" if rows is None else json.dumps(rows, separators=(",", ":")), flush=True)
    except OSError as exc:
        print("error", exc, flush=True)
    if select.select([sys.stdin], [], [], poll_s)[0] and not sys.stdin.readline():
        break
"""
WATCH_DEADLINE_S = 4 * 3600


def netem_in_tc_json(line: str) -> bool | None:
    """A line of the qdisc watcher (``tc -j qdisc show``'s JSON list) -> True when it holds a
    netem qdisc, False when it holds none, None for an error line or unreadable output."""
    try:
        qdiscs = json.loads(line)
    except ValueError:
        return None
    if not isinstance(qdiscs, list) or not all(isinstance(q, dict) for q in qdiscs):
        return None
    return any(q.get("kind") == "netem" for q in qdiscs)


class QdiscWatch:
    """The qdiscs of a remote service's namespace, as that host's kernel lists them (for ``tc
    qdisc show``), polled there over one ssh session (the stack's key and pinned known_hosts:
    ``ssh_argv``)."""

    def __init__(self, spec: RemoteSpec) -> None:
        self.spec = spec
        self._lock = threading.Lock()
        self._latest: tuple[float, bool | None, str] | None = None  # (monotonic, netem?, line)
        self._proc: subprocess.Popen | None = None
        self._closed = False
        self._thread: threading.Thread | None = None

    def start(self, timeout_s: float = 180) -> None:
        """Opens the session and waits for its first readable poll (the guest's Python starts in
        seconds under emulation); raises when none comes."""
        self._ensure_running()
        if self._fresh(timeout_s) is None:
            with self._lock:
                last = self._latest[2] if self._latest else "no line"
            self.close()
            raise RuntimeError(f"the qdisc watcher on the payments host gave no reading in {timeout_s:g} s "
                               f"({last[:200]})")

    def netem_present(self) -> bool:
        """The latest poll's answer, no older than WATCH_STALE_S (waits up to WATCH_WAIT_S for
        one). Unknown (no fresh poll, an error line) counts as present: a fault is never
        declared gone on a guess."""
        self._ensure_running()
        fresh = self._fresh(WATCH_WAIT_S)
        return True if fresh is None else fresh

    def _fresh(self, timeout_s: float) -> bool | None:
        start = time.monotonic()
        while True:
            with self._lock:
                latest = self._latest
            if latest is not None and time.monotonic() - latest[0] <= WATCH_STALE_S and latest[1] is not None:
                return latest[1]
            if time.monotonic() - start > timeout_s:
                return None
            time.sleep(POLL_S)

    def close(self) -> None:
        self._closed = True
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _ensure_running(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="qdisc-watch", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        spec = self.spec
        argv = ssh_argv(spec, [spec.python, "-c", QDISC_WATCHER, spec.state_dir, spec.service,
                               str(WATCH_POLL_S), str(WATCH_DEADLINE_S)])
        while not self._closed:  # a dropped session is opened again
            self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=subprocess.DEVNULL, text=True)
            for line in self._proc.stdout:
                with self._lock:
                    self._latest = (time.monotonic(), netem_in_tc_json(line.strip()), line.strip())
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=10)
            if not self._closed:
                time.sleep(1)


def wait_until(check: Callable[[], bool], timeout_s: float) -> float | None:
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if check():
            return time.monotonic() - start
        time.sleep(POLL_S)
    return None


def session_k6(sid: int) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if os.getsid(int(proc.name)) != sid:
                continue
            if (proc / "comm").read_text().strip() == "k6":
                found.append(int(proc.name))
        except (OSError, ProcessLookupError):
            continue
    return found


def run_trial(experiment: str, ending: str, env: dict[str, str], observer: Observer, workdir: Path,
              rng: random.Random, chaos_options: tuple[str, ...] = ()) -> Trial:
    trial = Trial(experiment, ending, observer.name)
    journal = workdir / f"{observer.name}-{experiment}-{ending}-{time.time_ns()}.json"
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "chaos"), "--no-version-check", "--log-file",
         str(journal.with_suffix(".log")), "run", *chaos_options, "--journal-path", str(journal),
         str(ROOT / "experiments" / f"{experiment}.json")],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    sid = proc.pid
    try:
        seen = wait_until(lambda: observer.effect_present(experiment) or proc.poll() is not None,
                          observer.inject_timeout_s)
        if seen is None or proc.poll() is not None or not observer.effect_present(experiment):
            trial.note = "no injection seen: " + _last_log_line(journal.with_suffix(".log"))
            return trial
        trial.injected = True
        trial.delay_s = round(rng.uniform(0.3, 6.0), 2)
        time.sleep(trial.delay_s)
        if not observer.effect_present(experiment):
            trial.note = "effect gone before the signal (a guard aborted the run)"
            trial.injected = False
            return trial
        sent = time.monotonic()
        {"sigint-pg": lambda: os.killpg(sid, signal.SIGINT),
         "sigterm": lambda: os.kill(proc.pid, signal.SIGTERM),
         "sigkill": lambda: os.kill(proc.pid, signal.SIGKILL),
         "sigkill-pg": lambda: os.killpg(sid, signal.SIGKILL),
         "sigstop": lambda: os.kill(proc.pid, signal.SIGSTOP)}[ending]()
        gone = wait_until(lambda: not observer.effect_present(experiment), observer.gone_timeout_s)
        trial.gone_after_s = None if gone is None else round(time.monotonic() - sent, 3)
        trial.fault_left = gone is None
        if ending == "sigstop":
            os.kill(proc.pid, signal.SIGCONT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            trial.note = "run did not end within 60 s of the signal: killed"
        time.sleep(3)
        trial.k6_left = len(session_k6(sid))
        if journal.exists():
            data = json.loads(journal.read_text())
            trial.status = data.get("status")
            safety = data.get("chaoscheckout_safety") or {}
            if safety.get("declared_dead"):
                trial.extra["declared_dead"] = safety["declared_dead"].get("cause")
        return trial
    finally:
        if proc.poll() is None:
            try:
                os.killpg(sid, signal.SIGCONT)
                os.killpg(sid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=30)
        for pid in session_k6(sid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _last_log_line(log: Path) -> str:
    """Why the run ended without a fault: its last CRITICAL/ERROR line, else its last line."""
    try:
        lines = [line for line in log.read_text().splitlines() if line.strip()]
    except OSError:
        return "no chaos log"
    why = [line for line in lines if "CRITICAL" in line or "ERROR" in line] or lines
    return why[-1][-160:] if why else "empty chaos log"


def summarize(trials: list[Trial]) -> dict[str, dict[str, dict]]:
    """{runtime: {ending: row}}."""
    table: dict[str, dict[str, dict]] = {}
    for runtime, ending in dict.fromkeys((t.runtime, t.ending) for t in trials):
        mine = [t for t in trials if t.runtime == runtime and t.ending == ending]
        done = [t for t in mine if t.injected]
        times = [t.gone_after_s for t in done if t.gone_after_s is not None]
        statuses: dict[str, int] = {}
        for t in done:
            statuses[str(t.status)] = statuses.get(str(t.status), 0) + 1
        table.setdefault(runtime, {})[ending] = {
            "trials": len(done), "faults_left": sum(t.fault_left for t in done),
            "median_s": round(statistics.median(times), 3) if times else None,
            "worst_s": max(times) if times else None, "k6_left": sum(t.k6_left for t in done),
            "journal_status": statuses,
            "skipped": sum(1 for t in mine if not t.injected),
        }
    return table


def print_table(table: dict[str, dict[str, dict]]) -> None:
    print(f"{'runtime':<7} {'ending':<11} {'trials':>6} {'left':>5} {'median s':>9} {'worst s':>8} "
          f"{'k6 left':>8}  journal status")
    for runtime, rows_ in table.items():
        for ending, row in rows_.items():
            med = "-" if row["median_s"] is None else f"{row['median_s']:.2f}"
            worst = "-" if row["worst_s"] is None else f"{row['worst_s']:.2f}"
            statuses = ", ".join(f"{k} {v}" for k, v in sorted(row["journal_status"].items()))
            print(f"{runtime:<7} {ending:<11} {row['trials']:>6} {row['faults_left']:>5} {med:>9} {worst:>8} "
                  f"{row['k6_left']:>8}  {statuses}"
                  + (f" (skipped {row['skipped']})" if row["skipped"] else ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials-per-ending", type=int, default=2, help="per ending and runtime")
    parser.add_argument("--docker-trials-per-ending", type=int, default=None,
                        help="per ending on the docker runtime (default: --trials-per-ending)")
    parser.add_argument("--endings", default=",".join(ENDINGS))
    parser.add_argument("--experiments", default=None,
                        help=f"default: {','.join(EXPERIMENTS)}; "
                        f"with --runtime vm: {','.join(VM_EXPERIMENTS)}")
    parser.add_argument("--runtime", choices=(*RUNTIMES, "both"), default="local",
                        help="where the stack runs: supervisord processes, containers, both (local and "
                        "docker) in turn, or vm: the local stack with payments on the QEMU VM over ssh "
                        "(stack up --remote-payments vm)")
    parser.add_argument("--port-base", type=int,
                        default=int(os.environ.get("CHAOSCHECKOUT_PORT_BASE", 41700)))
    parser.add_argument("--state-dir", type=Path, default=None)
    parser.add_argument("--docker-port-base", type=int, default=None,
                        help="the docker stack's port base (default: --port-base, + 200 with --runtime both)")
    parser.add_argument("--docker-state-dir", type=Path, default=None,
                        help="the docker stack's state dir (default: --state-dir with --runtime docker)")
    parser.add_argument("--use-running", action="store_true",
                        help="use the stack(s) already up in the state dir(s)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--round-robin", action="store_true",
                        help="assign experiments to each ending in turn instead of at random")
    parser.add_argument("--keep-logs", type=Path, default=None, help="keep chaos logs under this dir")
    parser.add_argument("--json", type=Path, default=None, help="write trials and table here")
    parser.add_argument("--warmup-s", type=float, default=float(SHORT_ENV["CHAOSCHECKOUT_LOAD_WARMUP_S"]),
                        help="k6 warm-up before the steady state (more requests: a stray error weighs less)")
    parser.add_argument("--no-steady-state-first", action="store_true",
                        help="chaos run --hypothesis-strategy after-method-only: inject even when the "
                        "steady state would not hold (an overloaded machine); how a fault is reverted "
                        "does not depend on it")
    parser.add_argument("--stop-after-s", type=float, default=None,
                        help="start no new trial after this many seconds; the table covers what ran")
    parser.add_argument("--max-median-s", type=float, default=2.0)
    parser.add_argument("--max-worst-s", type=float, default=5.0)
    args = parser.parse_args(argv)
    endings = [e for e in args.endings.split(",") if e]
    if args.experiments is None:
        args.experiments = ",".join(VM_EXPERIMENTS if args.runtime == "vm" else EXPERIMENTS)
    experiments = [e for e in args.experiments.split(",") if e]
    for name in endings:
        if name not in ENDINGS:
            parser.error(f"unknown ending {name!r}; known: {', '.join(ENDINGS)}")
    for name in experiments:
        if name not in OBSERVABLE:
            parser.error(f"unknown experiment {name!r}; known: {', '.join(OBSERVABLE)}")
        if name in VM_EXPERIMENTS and args.runtime != "vm":
            parser.error(f"{name} needs payments on the VM: --runtime vm")
    if args.docker_trials_per_ending is None:
        args.docker_trials_per_ending = args.trials_per_ending
    if not (1 <= args.trials_per_ending <= 1000 and 1 <= args.docker_trials_per_ending <= 1000):
        parser.error("--trials-per-ending and --docker-trials-per-ending must be in 1..1000")
    if args.keep_logs is not None:  # before any stack comes up: a bad path fails here
        try:
            args.keep_logs.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            parser.error(f"--keep-logs {args.keep_logs}: {exc.strerror}")
    runtimes = list(RUNTIMES) if args.runtime == "both" else [args.runtime]
    stacks: dict[str, tuple[Path, int]] = {}  # runtime -> (state dir, port base)
    if "local" in runtimes:
        state = args.state_dir or Path(f"/var/tmp/cc-bench-interrupt-{args.port_base}")
        stacks["local"] = (state, args.port_base)
    if "vm" in runtimes:
        state = args.state_dir or Path(f"/var/tmp/cc-bench-interrupt-vm-{args.port_base}")
        stacks["vm"] = (state, args.port_base)
    if "docker" in runtimes:
        base = args.docker_port_base or (args.port_base + 200 if "local" in runtimes else args.port_base)
        state = args.docker_state_dir or (args.state_dir if "local" not in runtimes else None) \
            or Path(f"/var/tmp/cc-bench-interrupt-docker-{base}")
        stacks["docker"] = (state, base)
    if len({base for _, base in stacks.values()}) != len(stacks):
        parser.error("the local and docker stacks need different port bases")
    if not 1 <= args.warmup_s <= 120:
        parser.error("--warmup-s must be in 1..120")
    short = {**SHORT_ENV, "CHAOSCHECKOUT_LOAD_WARMUP_S": f"{args.warmup_s:g}"}
    envs = {runtime: {**os.environ, "CHAOSCHECKOUT_STATE_DIR": str(state),
                      "CHAOSCHECKOUT_PORT_BASE": str(base),
                      "CHAOSCHECKOUT_RUNTIME": "local" if runtime == "vm" else runtime,
                      "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}", **short,
                      **(VM_ENV if runtime == "vm" else {})}
            for runtime, (state, base) in stacks.items()}
    manage = [sys.executable, "-m", "stack.manage"]
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    plan = []
    for runtime in runtimes:
        count = args.docker_trials_per_ending if runtime == "docker" else args.trials_per_ending
        if args.round_robin:  # every ending meets every experiment in turn (the short test's plan)
            plan += [(experiments[(i + k) % len(experiments)], ending, runtime)
                     for k, ending in enumerate(endings) for i in range(count)]
        else:
            plan += [(rng.choice(experiments), ending, runtime)
                     for ending in endings for _ in range(count)]
    rng.shuffle(plan)
    where = ", ".join(f"{r} stack {state} (port base {base})" for r, (state, base) in stacks.items())
    print(f"interrupt bench: seed {seed}, {len(plan)} trials, {where}", flush=True)
    started: list[str] = []
    trials: list[Trial] = []
    observers: dict[str, Observer] = {}
    # a SIGTERMed bench still runs its finally blocks: the current run killed (its owner-bound
    # faults reverted), the watcher closed, the stacks (and the VM) down
    previous_sigterm = signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM)) \
        if threading.current_thread() is threading.main_thread() else None
    try:
        if not args.use_running:
            for runtime in stacks:
                started.append(runtime)  # down even when interrupted half-way up
                if not _stack_up(manage, runtime, envs[runtime]):
                    return 1
        for runtime, (state, _) in stacks.items():
            observers[runtime] = Observer(state, runtime)
        workdir = Path(tempfile.mkdtemp(prefix="cc-interrupt-", dir=args.keep_logs))
        began = time.monotonic()
        try:
            for number, (experiment, ending, runtime) in enumerate(plan, 1):
                if args.stop_after_s is not None and time.monotonic() - began > args.stop_after_s:
                    print(f"--stop-after-s {args.stop_after_s:g} reached: {number - 1} of {len(plan)} "
                          "planned trials ran", flush=True)
                    break
                observer = observers[runtime]
                label = f"[{number}/{len(plan)}] {runtime:<6} {experiment:<16} {ending:<10}"
                for _attempt in range(ATTEMPTS):  # a run whose steady state was not met injects nothing
                    trial = run_trial(experiment, ending, envs[runtime], observer, workdir, rng,
                                      ("--hypothesis-strategy", "after-method-only")
                                      if args.no_steady_state_first else ())
                    trials.append(trial)
                    if trial.injected:
                        break
                    print(f"{label} not counted: {trial.note}", flush=True)
                    observer.wait_no_recent_errors(args.warmup_s)
                print(f"{label} "
                      f"{'gone after ' + str(trial.gone_after_s) + ' s' if trial.injected else trial.note} "
                      f"status {trial.status} k6 left {trial.k6_left} {trial.note if trial.injected else ''}",
                      flush=True)
                # let the restarted/cleaned service settle before the next steady-state check
                wait_until(lambda obs=observer: all(not obs.effect_present(e) for e in obs.observable()), 30)
                observer.wait_no_recent_errors(args.warmup_s)
        finally:
            if args.keep_logs is None:
                shutil.rmtree(workdir, ignore_errors=True)
    finally:
        for observer in observers.values():
            observer.close()
        for runtime in started:
            subprocess.run([*manage, "down", "--runtime", "local" if runtime == "vm" else runtime], cwd=ROOT,
                           env=envs[runtime], capture_output=True, timeout=300)
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)
    table = summarize(trials)
    print_table(table)
    if args.json:
        args.json.write_text(json.dumps({"seed": seed, "table": table, "trials": [asdict(t) for t in trials],
                                         "stacks": {r: {"state_dir": str(s), "port_base": b}
                                                    for r, (s, b) in stacks.items()},
                                         "options": {k: v if isinstance(v, int | float | None) else str(v)
                                                     for k, v in vars(args).items()}}, indent=2))
    failures = []
    for runtime, rows_ in table.items():
        for ending, row in rows_.items():
            where = f"{runtime} {ending}"
            if row["faults_left"] or row["k6_left"]:
                failures.append(f"{where}: {row['faults_left']} fault(s) left, {row['k6_left']} k6 left")
            if row["median_s"] is not None and row["median_s"] > args.max_median_s:
                failures.append(f"{where}: median {row['median_s']} s > {args.max_median_s} s")
            if row["worst_s"] is not None and row["worst_s"] > args.max_worst_s:
                failures.append(f"{where}: worst {row['worst_s']} s > {args.max_worst_s} s")
            if row["trials"] == 0:
                failures.append(f"{where}: no trial injected a fault")
    for line in failures:
        print(f"FAIL {line}")
    return 1 if failures else 0


def _stack_up(manage: list[str], runtime: str, env: dict[str, str]) -> bool:
    """``stack.manage up`` for one runtime (retried when a port is briefly taken)."""
    # docker: images may be (re)built first; vm: the guest image too, then a boot under emulation
    timeout = 300 if runtime == "local" else 1800
    how = ["--runtime", "local", "--remote-payments", "vm"] if runtime == "vm" else ["--runtime", runtime]
    env = {**env, **VM_STACK_ENV} if runtime == "vm" else env
    for _attempt in range(3):  # a port of the base may be a client's ephemeral port in TIME-WAIT
        up = subprocess.run([*manage, "up", *how], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=timeout)
        if up.returncode == 0 or "already in use" not in up.stdout + up.stderr:
            break
        time.sleep(20)
    if up.returncode != 0:
        print(up.stdout + up.stderr, file=sys.stderr)
        subprocess.run([*manage, "down", "--runtime", "local" if runtime == "vm" else runtime], cwd=ROOT,
                       env=env, capture_output=True, timeout=300)
        return False
    return True


# ---------------------------------------------------------------------------
# make bench (bench/run.py): "owner killed -> fault reverted" rows
# ---------------------------------------------------------------------------
SECTION = "interrupt"
NEEDS_STACK = True
# the bound before the dead-man switch: the experiments' lease (CHAOSCHECKOUT_FAULT_DURATION_S)
BEFORE_S = 180.0


def rows(ctx) -> list:
    """Trials against the bench's running stack: smoke = one SIGKILL of kill-catalog; full =
    2 trials per ending, experiments in turn. One row per ending: median signal -> effect gone."""
    from table import Row

    endings = ["sigkill"] if ctx.smoke else list(ENDINGS)
    argv = ["--use-running", "--state-dir", str(ctx.state_dir), "--port-base", str(ctx.port_base),
            "--endings", ",".join(endings), "--trials-per-ending", "1" if ctx.smoke else "2",
            "--round-robin"]
    if ctx.smoke:
        argv += ["--experiments", "kill-catalog"]
    with tempfile.TemporaryDirectory(prefix="cc-bench-interrupt-") as tmp:
        out = Path(tmp) / "interrupt.json"
        code = main([*argv, "--json", str(out)])
        table = json.loads(out.read_text())["table"].get("local", {}) if out.exists() else {}
    result = []
    for ending in endings:
        row = table.get(ending) or {}
        left = row.get("faults_left", 0) + row.get("k6_left", 0)
        ok = bool(row.get("trials")) and not left and row.get("median_s") is not None \
            and row["median_s"] <= 2.0 and (row.get("worst_s") or 0) <= 5.0
        result.append(Row(SECTION, f"owner ended by {ending} → fault's effect gone", row.get("median_s"),
                          "s", BEFORE_S, "lease expiry (before the dead-man switch)",
                          "median <= 2 s, worst <= 5 s", ok,
                          note=f"{row.get('trials', 0)} trial(s), worst {row.get('worst_s')} s, "
                          f"{row.get('faults_left', '?')} fault(s) and {row.get('k6_left', '?')} k6 left"
                          + ("" if code == 0 else "; bench exit 1")))
    return result


if __name__ == "__main__":
    sys.exit(main())
