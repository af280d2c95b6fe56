"""A TCP relay (stdlib asyncio): LISTEN_HOST LISTEN_PORT TARGET_HOST TARGET_PORT.

Joins a service in its own network namespace to the root namespace's addresses, so the
traffic between the service and its callers or upstreams crosses the veth that netem
delays: ``stack up`` with chaos targets in namespaces (stack/targetns.py) and the VM guest
(tests/vm/guest/) run it. Stdlib only (the guest runs it as a script from its copy of the
repository: ``python stack/relay.py ...``).
"""

from __future__ import annotations

import asyncio
import sys

CONNECT_TIMEOUT_S = 10


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        if writer.can_write_eof():
            try:
                writer.write_eof()
            except OSError:
                writer.close()


async def main(listen_host: str, listen_port: int, target_host: str, target_port: int) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(target_host, target_port), CONNECT_TIMEOUT_S)
        except OSError:  # includes TimeoutError
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        up_writer.close()
        writer.close()

    server = await asyncio.start_server(handle, listen_host, listen_port)
    print(f"relay {listen_host}:{listen_port} -> {target_host}:{target_port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    host, port, target, target_port = sys.argv[1:5]
    asyncio.run(main(host, int(port), target, int(target_port)))
