"""A TLS origin and client on a recent OpenSSL (the one the `cryptography` wheel bundles,
3.5 or newer), which speaks X25519MLKEM768: Debian 12's OpenSSL 3.0 cannot. Runs from the
venv scripts/setup.sh makes (target/tls-peer-venv).

    tls_peer.py server ADDR PORT CERT KEY
        Serves HTTP/1.1 over TLS until killed. Each response body names the group the
        handshake negotiated ("group=X25519MLKEM768"); each connection prints a line.
    tls_peer.py client ADDR PORT SNI CAFILE [GROUPS]
        One GET / with SNI, verifying against CAFILE; GROUPS (OpenSSL syntax, e.g.
        "X25519MLKEM768:X25519") sets the supported groups, and OpenSSL then sends a key
        share for the first one only. Prints "local_port=N group=NAME" and the body.
"""
import socket
import struct
import sys

from OpenSSL import SSL
from OpenSSL._util import lib as openssl


def bound(sock, seconds=10):
    """A blocking socket (pyOpenSSL needs one) whose reads and writes give up in time."""
    sock.settimeout(None)
    limit = struct.pack("ll", seconds, 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, limit)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, limit)
    return sock


def group_of(conn):
    name = conn.get_group_name()
    return name.decode() if isinstance(name, bytes) else str(name)


def serve(addr, port, cert, key):
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.use_certificate_chain_file(cert)
    ctx.use_privatekey_file(key)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((addr, int(port)))
    listener.listen(64)
    print(f"listening on {addr}:{port}", flush=True)
    while True:
        raw, peer = listener.accept()
        conn = SSL.Connection(ctx, bound(raw))
        conn.set_accept_state()
        try:
            conn.do_handshake()
            request = b""
            while b"\r\n\r\n" not in request and len(request) < 65536:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                request += chunk
            body = f"group={group_of(conn)}\n".encode()
            head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            conn.sendall(head.encode() + body)
            conn.shutdown()
            print(f"{peer[0]}:{peer[1]} group={group_of(conn)}", flush=True)
        except (SSL.Error, OSError) as e:
            print(f"{peer[0]}:{peer[1]} failed: {e!r}", flush=True)
        finally:
            raw.close()


def fetch(addr, port, sni, cafile, groups=None):
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.load_verify_locations(cafile)
    ctx.set_verify(SSL.VERIFY_PEER, lambda *args: args[-1])
    if groups:
        if openssl.SSL_CTX_set1_curves_list(ctx._context, groups.encode()) != 1:
            sys.exit(f"OpenSSL refused the groups {groups!r}")
    raw = bound(socket.create_connection((addr, int(port)), timeout=10))
    conn = SSL.Connection(ctx, raw)
    conn.set_tlsext_host_name(sni.encode())
    conn.set_connect_state()
    conn.do_handshake()
    conn.sendall(f"GET / HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n".encode())
    response = b""
    while True:
        try:
            chunk = conn.recv(4096)
        except SSL.ZeroReturnError:
            break
        if not chunk:
            break
        response += chunk
    print(f"local_port={raw.getsockname()[1]} group={group_of(conn)}")
    print(response.decode(errors="replace").split("\r\n\r\n", 1)[-1], end="")


if __name__ == "__main__":
    if len(sys.argv) >= 6 and sys.argv[1] == "server":
        serve(*sys.argv[2:6])
    elif len(sys.argv) >= 6 and sys.argv[1] == "client":
        fetch(*sys.argv[2:7])
    else:
        sys.exit(__doc__)
