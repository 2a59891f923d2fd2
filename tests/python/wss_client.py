"""A wss:// client the TLS test drives line by line: Python `websockets`
(asyncio client) with an `ssl` context that trusts only the CA file it is
given, so which CA validates a handshake tells which certificate the server
served. Usage: wss_client.py wss://127.0.0.1:PORT

Commands on stdin, one answer line each on stdout:
  open NAME CAFILE   -> "ok SHA256" (the served certificate's fingerprint)
                        or "refused CLASS: message (cause: CLASS: message)"
  echo NAME TEXT     -> the reply, or "error CLASS: message"
  quit

Why asyncio and not websockets' threaded sync client: the sync client reads
the TLS socket in a background thread while the caller writes it, and
OpenSSL forbids concurrent SSL_read/SSL_write on one session. Under load
the handshake request written while the reader thread was taking the
server's TLS 1.3 session tickets was silently lost (the server, still
waiting for it, closed at handshake_timeout_ms; the client saw "did not
receive a valid HTTP response"). The asyncio client does all TLS on one
thread.
"""
import asyncio
import hashlib
import ssl
import sys

from websockets.asyncio.client import connect

TIMEOUT_S = 20


async def answer(conns, url, parts):
    command = parts[0]
    try:
        if command == "open":
            name, cafile = parts[1], parts[2]
            context = ssl.create_default_context(cafile=cafile)
            ws = await connect(url, ssl=context, open_timeout=TIMEOUT_S)
            conns[name] = ws
            der = ws.transport.get_extra_info("ssl_object").getpeercert(binary_form=True)
            return "ok " + hashlib.sha256(der).hexdigest()
        if command == "echo":
            ws = conns[parts[1]]
            await ws.send(parts[2])
            return await asyncio.wait_for(ws.recv(), TIMEOUT_S)
        return f"error unknown command {command!r}"
    except Exception as error:  # the test reads the class and message
        kind = "refused" if command == "open" else "error"
        text = f"{kind} {type(error).__name__}: {error}"
        # websockets wraps what went wrong (an EOF, a reset, a bad status
        # line) in InvalidMessage: say the cause too.
        if error.__cause__ is not None:
            text += f" (cause: {type(error.__cause__).__name__}: {error.__cause__})"
        return text


async def main(url):
    conns = {}
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        parts = line.rstrip("\n").split(" ", 2)
        if not line or parts[0] == "quit":
            break
        print((await answer(conns, url, parts)).replace("\n", " "), flush=True)
    for ws in conns.values():
        await ws.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
