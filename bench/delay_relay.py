#!/usr/bin/env python3
"""
A keep-alive HTTP/1.1 relay that passes each request on a fixed delay after
it arrived: a mirror that many milliseconds of round trip away, for
bench/apt_bench.py --delay-ms. Pipelined requests are each delayed from
their own arrival, not one after the other (as a far server answers a
pipeline: one round trip for the lot), and answered in order. GET and HEAD
with a Content-Length answer only (what the kit's nginx sends).

    bench/delay_relay.py LISTEN_PORT UPSTREAM_PORT DELAY_MS      (127.0.0.1 both)
"""

from __future__ import annotations

import argparse
import asyncio


async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: int, delay: float) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()

    async def read_requests() -> None:
        try:
            while True:
                queue.put_nowait((loop.time() + delay, await reader.readuntil(b"\r\n\r\n")))
        except (asyncio.IncompleteReadError, ConnectionError):
            queue.put_nowait(None)

    reading = asyncio.ensure_future(read_requests())
    up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream)
    try:
        while (item := await queue.get()) is not None:
            due, head = item
            await asyncio.sleep(max(0.0, due - loop.time()))
            up_writer.write(head)
            await up_writer.drain()
            answer = await up_reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in answer.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            body = b"" if head.startswith(b"HEAD ") else await up_reader.readexactly(length)
            writer.write(answer + body)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        reading.cancel()
        writer.close()
        up_writer.close()


async def main(port: int, upstream: int, delay: float) -> None:
    server = await asyncio.start_server(lambda r, w: relay(r, w, upstream, delay), "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="A relay to 127.0.0.1:UPSTREAM_PORT that delays each request.")
    parser.add_argument("listen_port", type=int, help="the port it listens on, on 127.0.0.1")
    parser.add_argument("upstream_port", type=int, help="the port of the server it relays to, on 127.0.0.1")
    parser.add_argument("delay_ms", type=float, help="milliseconds each request waits after it arrived")
    args = parser.parse_args()
    asyncio.run(main(args.listen_port, args.upstream_port, args.delay_ms / 1000))
