"""A wss:// client the TLS test drives line by line: Python `websockets`
(sync client) with an `ssl` context that trusts only the CA file it is
given, so which CA validates a handshake tells which certificate the server
served. Usage: wss_client.py wss://127.0.0.1:PORT

Commands on stdin, one answer line each on stdout:
  open NAME CAFILE   -> "ok SHA256" (the served certificate's fingerprint)
                        or "refused CLASS: message"
  echo NAME TEXT     -> the reply, or "error CLASS: message"
  quit
"""
import hashlib
import ssl
import sys

from websockets.sync.client import connect

TIMEOUT_S = 20


def main(url):
    conns = {}
    for line in sys.stdin:
        parts = line.rstrip("\n").split(" ", 2)
        command = parts[0]
        try:
            if command == "open":
                name, cafile = parts[1], parts[2]
                context = ssl.create_default_context(cafile=cafile)
                ws = connect(url, ssl=context, open_timeout=TIMEOUT_S)
                conns[name] = ws
                der = ws.socket.getpeercert(binary_form=True)
                answer = "ok " + hashlib.sha256(der).hexdigest()
            elif command == "echo":
                ws = conns[parts[1]]
                ws.send(parts[2])
                answer = ws.recv(timeout=TIMEOUT_S)
            elif command == "quit":
                break
            else:
                answer = f"error unknown command {command!r}"
        except Exception as error:  # the test reads the class and message
            kind = "refused" if command == "open" else "error"
            answer = f"{kind} {type(error).__name__}: {error}".replace("\n", " ")
        print(answer, flush=True)
    for ws in conns.values():
        ws.close()


if __name__ == "__main__":
    main(sys.argv[1])
