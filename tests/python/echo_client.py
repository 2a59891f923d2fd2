"""Third-party client check: Python `websockets` against a running hotsock
echo server. Usage: echo_client.py ws://127.0.0.1:PORT

Opens 10 connections, sends 50 numbered messages on each (pipelined), and
checks every reply arrives once, in order, with the echo prefix. Also checks
that a handshake the worker denies gets HTTP 403, and that a binary message
comes back unchanged. Exits non-zero with a message on any mismatch.
"""
import asyncio
import sys

import websockets


async def one_connection(url, c):
    async with websockets.connect(url + f"/py?c={c}") as ws:
        for n in range(50):
            await ws.send(f"{c}:{n}")
        for n in range(50):
            reply = await asyncio.wait_for(ws.recv(), 20)
            if reply != f"v1:{c}:{n}":
                raise AssertionError(f"conn {c}: expected v1:{c}:{n}, got {reply!r}")
        await ws.send(b"\x00\xffbin")
        reply = await asyncio.wait_for(ws.recv(), 20)
        if reply != b"\x00\xffbin":
            raise AssertionError(f"binary echo mismatch: {reply!r}")


async def main(url):
    await asyncio.gather(*(one_connection(url, c) for c in range(10)))
    try:
        async with websockets.connect(url + "/?deny=1"):
            raise AssertionError("a denied handshake was accepted")
    except websockets.exceptions.InvalidStatus as error:
        if error.response.status_code != 403:
            raise AssertionError(f"expected 403, got {error.response.status_code}")
    print("python websockets: 500 messages echoed in order, binary ok, deny=403 ok")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
