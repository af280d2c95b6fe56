"""QEMU ``guestfwd`` helper: relay stdin/stdout to a TCP port of this machine's loopback.

QEMU user networking starts ``python -I -S guestfwd_relay.py 127.0.0.1 PORT`` once per
connection the guest opens to the guestfwd address, with the connection as stdin and
stdout (stack/vm.py). Stdlib only and started without ``site`` so each connection costs
little. It only ever connects to 127.0.0.1.
"""

import os
import select
import socket
import sys

CONNECT_TIMEOUT_S = 10
IDLE_TIMEOUT_S = 600
CHUNK = 65536


def main() -> int:
    host, port = sys.argv[1], int(sys.argv[2])
    if host != "127.0.0.1":
        return 2
    try:
        upstream = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S)
    except OSError:
        return 1
    upstream.settimeout(None)
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    while True:
        ready, _, _ = select.select([stdin, upstream], [], [], IDLE_TIMEOUT_S)
        if not ready:
            break
        if stdin in ready:
            data = os.read(stdin, CHUNK)
            if data:
                upstream.sendall(data)
            else:  # the guest closed: HTTP clients never half-close, so the exchange is over
                break
        if upstream in ready:
            data = upstream.recv(CHUNK)
            if data:
                view = memoryview(data)
                while view:
                    view = view[os.write(stdout, view):]
            else:  # the provider closed: the guest sees the close when we exit
                break
    upstream.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
