"""``python -m chaoscheckout.remote``: the remote agent's command line (see the package doc)."""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys

from chaoscheckout.errors import InvalidFaultArgument
from chaoscheckout.remote.agent import VERBS, run_verb
from chaoscheckout.remote.keeper import DEFAULT_MISS_S, keep, parse_args_json
from chaoscheckout.remote.wire import answer_line

RUN_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaoscheckout.remote",
                                     description="chaoscheckout's remote agent (run over ssh)")
    parser.add_argument("verb", choices=[*VERBS, "keep"])
    parser.add_argument("--state-dir", required=True, help="this host's state dir")
    parser.add_argument("--json", default="{}", help="the verb's arguments (a JSON object)")
    parser.add_argument("--kind", help="keep: the fault kind")
    parser.add_argument("--args", default="{}", help="keep: the inject action's arguments (JSON)")
    parser.add_argument("--run-id", help="keep: the controller's run id (owner of the remote lease)")
    parser.add_argument("--expires-at", type=float, help="keep: unix time the fault ends at the latest")
    parser.add_argument("--miss-s", type=float, default=DEFAULT_MISS_S,
                        help="keep: revert after this many seconds without a heartbeat")
    ns = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if not ns.state_dir.startswith("/"):
        print(answer_line(error=InvalidFaultArgument("--state-dir must be an absolute path")), flush=True)
        return 2
    if ns.verb == "keep":
        try:
            if not (ns.kind and ns.run_id and RUN_ID_RE.fullmatch(ns.run_id) and ns.expires_at is not None):
                raise InvalidFaultArgument("keep needs --kind, a safe --run-id and --expires-at")
            args = parse_args_json(ns.args)
        except InvalidFaultArgument as exc:
            print(answer_line(error=exc), flush=True)
            return 2
        return keep(ns.state_dir, ns.kind, args, ns.run_id, ns.expires_at, ns.miss_s)
    configuration = {"chaoscheckout_state_dir": ns.state_dir}
    try:
        args = json.loads(ns.json)
        result = run_verb(ns.verb, args, configuration)
    except Exception as exc:  # noqa: BLE001 - every failure is one JSON error line
        print(answer_line(error=exc), flush=True)
        return 1
    print(answer_line(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
