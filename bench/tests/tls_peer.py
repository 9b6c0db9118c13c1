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
    tls_peer.py half-close-server ADDR PORT CERT KEY
        Until killed, per connection: reads a line "ORDER N M". ORDER client-first: reads
        the client's N bytes up to its close_notify, then sends M random bytes, its
        close_notify and a FIN. ORDER server-first: sends M random bytes, close_notify and
        FIN at once (half-closing its side), then reads the client's N bytes up to its
        close_notify. One JSON line per connection: what it sent and received (bytes,
        SHA-256) and how the client's side ended.
    tls_peer.py half-close-client ADDR PORT SNI CAFILE ORDER N M
        The other side of it: client-first sends N random bytes, close_notify and FIN and
        then reads the reply; server-first reads the server's M bytes up to its
        close_notify, then sends N bytes, close_notify and FIN. One JSON line, the same
        fields and local_port.
"""
import hashlib
import json
import os
import socket
import struct
import sys

from OpenSSL import SSL
from OpenSSL._util import lib as openssl

# The script's own directory is on the path: the request-head reader both peers use.
from misbehaving_peer import read_head


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


def serve_each(addr, port, cert, key, handle):
    """Until killed, accepts TLS connections on ADDR:PORT with CERT and KEY and prints
    what handle(conn, peer_name) returns for each after its handshake, or a JSON line
    naming the peer and the error."""
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
        name = f"{peer[0]}:{peer[1]}"
        conn = SSL.Connection(ctx, bound(raw))
        conn.set_accept_state()
        try:
            conn.do_handshake()
            print(handle(conn, name), flush=True)
        except (SSL.Error, OSError, ValueError) as e:
            print(json.dumps({"peer": name, "failed": repr(e)}), flush=True)
        finally:
            raw.close()


def answer_with_group(conn, name):
    """One HTTP/1.1 response naming the group the handshake negotiated."""
    read_head(conn)
    body = f"group={group_of(conn)}\n".encode()
    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    conn.sendall(head.encode() + body)
    conn.shutdown()
    return f"{name} group={group_of(conn)}"


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


def read_to_close(conn, already=b""):
    """Reads until the peer's close_notify: (bytes, sha256 hex, how the stream ended)."""
    digest = hashlib.sha256(already)
    count = len(already)
    while True:
        try:
            chunk = conn.recv(65536)
        except SSL.ZeroReturnError:
            return count, digest.hexdigest(), "close_notify"
        except SSL.Error as e:
            return count, digest.hexdigest(), f"no close_notify: {e!r}"
        if not chunk:
            return count, digest.hexdigest(), "eof without close_notify"
        digest.update(chunk)
        count += len(chunk)


def send_then_half_close(conn, size):
    """Sends `size` random bytes, then close_notify and a TCP FIN; the read side stays open."""
    digest = hashlib.sha256()
    left = size
    while left:
        chunk = os.urandom(min(left, 65536))
        conn.sendall(chunk)
        digest.update(chunk)
        left -= len(chunk)
    conn.shutdown()
    conn.sock_shutdown(socket.SHUT_WR)
    return digest.hexdigest()


def half_close_exchange(conn, name):
    """The server's side of one half-close exchange (see half-close-server above)."""
    head = b""
    while b"\n" not in head and len(head) < 256:
        head += conn.recv(256 - len(head))
    line, rest = head.split(b"\n", 1)
    order, n, m = line.decode().split()
    result = {"peer": name, "order": order}
    if order == "client-first":
        result["received"], result["received_sha"], result["ended_by"] = read_to_close(conn, rest)
        result["sent"], result["sent_sha"] = int(m), send_then_half_close(conn, int(m))
    else:
        result["sent"], result["sent_sha"] = int(m), send_then_half_close(conn, int(m))
        result["received"], result["received_sha"], result["ended_by"] = read_to_close(conn, rest)
    return json.dumps(result)


def half_close_client(addr, port, sni, cafile, order, n, m):
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.load_verify_locations(cafile)
    ctx.set_verify(SSL.VERIFY_PEER, lambda *args: args[-1])
    raw = bound(socket.create_connection((addr, int(port)), timeout=10))
    conn = SSL.Connection(ctx, raw)
    conn.set_tlsext_host_name(sni.encode())
    conn.set_connect_state()
    conn.do_handshake()
    result = {"local_port": raw.getsockname()[1], "order": order}
    conn.sendall(f"{order} {n} {m}\n".encode())
    if order == "client-first":
        result["sent"], result["sent_sha"] = int(n), send_then_half_close(conn, int(n))
        result["received"], result["received_sha"], result["ended_by"] = read_to_close(conn)
    else:
        result["received"], result["received_sha"], result["ended_by"] = read_to_close(conn)
        result["sent"], result["sent_sha"] = int(n), send_then_half_close(conn, int(n))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    if len(sys.argv) >= 6 and sys.argv[1] == "server":
        serve_each(*sys.argv[2:6], answer_with_group)
    elif len(sys.argv) >= 6 and sys.argv[1] == "client":
        fetch(*sys.argv[2:7])
    elif len(sys.argv) == 6 and sys.argv[1] == "half-close-server":
        serve_each(*sys.argv[2:6], half_close_exchange)
    elif len(sys.argv) == 9 and sys.argv[1] == "half-close-client":
        half_close_client(*sys.argv[2:9])
    else:
        sys.exit(__doc__)
