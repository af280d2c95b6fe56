"""The remote side of the SSH runtime: the agent run on a remote host over ssh.

``python -m chaoscheckout.remote <verb> --state-dir DIR --json ARGS`` acts on the remote
host with its own local runtime and registry (``DIR/services.json``) and prints one JSON
line (:mod:`chaoscheckout.remote.wire`). Verbs: health, pid, kill, start, describe,
revert, verify, status (:mod:`chaoscheckout.remote.agent`) and ``keep``, the fault keeper
session (:mod:`chaoscheckout.remote.keeper`). The controller side of a keeper session is
:mod:`chaoscheckout.remote.session`. See docs/ssh.md.
"""
