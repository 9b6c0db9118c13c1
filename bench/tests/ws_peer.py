"""A WebSocket server and client over TLS (the `websockets` library, sync API), to check
that an HTTP/1.1 Upgrade through loupe carries every byte both ways. Runs from the venv
scripts/setup.sh makes (target/tls-peer-venv).

    ws_peer.py server ADDR PORT CERT KEY
        Serves wss:// until killed. A client says "send N", sends binary messages, then
        "done"; the server answers with N random bytes in binary messages, then a text
        message "received=<sha256 of what it got> sent=<sha256 of what it sent>".
    ws_peer.py client HOST PORT CAFILE BYTES
        Sends BYTES random bytes and asks for as many back; prints one line:
        "client_sent=… server_received=… server_sent=… client_received=…".
"""
import hashlib
import os
import ssl
import sys

from websockets.sync.client import connect
from websockets.sync.server import serve

CHUNK = 64 * 1024


def handle(ws):
    received = hashlib.sha256()
    want = 0
    for message in ws:
        if isinstance(message, bytes):
            received.update(message)
        elif message.startswith("send "):
            want = int(message[5:])
        elif message == "done":
            break
    sent = hashlib.sha256()
    while want > 0:
        piece = os.urandom(min(CHUNK, want))
        sent.update(piece)
        ws.send(piece)
        want -= len(piece)
    ws.send(f"received={received.hexdigest()} sent={sent.hexdigest()}")


def server(addr, port, cert, key):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    with serve(handle, addr, int(port), ssl=ctx, max_size=None) as running:
        print("listening", flush=True)
        running.serve_forever()


def client(host, port, cafile, size):
    ctx = ssl.create_default_context(cafile=cafile)
    size = int(size)
    sent = hashlib.sha256()
    received = hashlib.sha256()
    with connect(f"wss://{host}:{port}/ws", ssl=ctx, max_size=None, open_timeout=10, close_timeout=5) as ws:
        ws.send(f"send {size}")
        left = size
        while left > 0:
            piece = os.urandom(min(CHUNK, left))
            sent.update(piece)
            ws.send(piece)
            left -= len(piece)
        ws.send("done")
        while True:
            message = ws.recv(timeout=20)
            if isinstance(message, bytes):
                received.update(message)
                continue
            fields = dict(part.split("=", 1) for part in message.split())
            break
    print(
        f"client_sent={sent.hexdigest()} server_received={fields['received']} "
        f"server_sent={fields['sent']} client_received={received.hexdigest()}",
        flush=True,
    )


if __name__ == "__main__":
    if sys.argv[1] == "server":
        server(*sys.argv[2:6])
    elif sys.argv[1] == "client":
        client(*sys.argv[2:6])
    else:
        sys.exit(f"usage: {sys.argv[0]} server|client …")
