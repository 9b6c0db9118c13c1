"""Peers that misbehave, for bench/tests/misbehaving_peers.rs. Python's own ssl module;
run with the venv's Python (target/tls-peer-venv) like tls_peer.py.

    misbehaving_peer.py reset-after-hello ADDR PORT
        A TCP server that reads the client's first bytes (loupe's upstream ClientHello)
        and answers with a reset (SO_LINGER 0). One line per connection.
    misbehaving_peer.py reset-mid-response ADDR PORT CERT KEY
        An HTTPS server that reads a request head, sends a response head announcing
        1 MiB and 64 KiB of its body, then resets the connection. One line per connection.
    misbehaving_peer.py stop-reading ADDR PORT CERT KEY
        An HTTPS server that completes the handshake, reads the request head, prints
        "stalled", then holds the connection without reading another byte until killed.
        Its receive buffer is 64 KiB, so the window it offers closes soon.
    misbehaving_peer.py slow-hello ADDR PORT SNI INTERVAL
        A client that sends a real ClientHello one byte every INTERVAL seconds and prints
        how it ended: "ended after S s, N of M bytes sent: WHY".
"""
import socket
import ssl
import struct
import sys
import time


def listener(addr, port, rcvbuf=None):
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if rcvbuf:
        # Set before listen so accepted sockets inherit it (and the window scale it implies).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind((addr, int(port)))
    sock.listen(16)
    print(f"listening on {addr}:{port}", flush=True)
    return sock


def reset(sock):
    """Close with a RST instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def server_context(cert, key):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def read_head(conn):
    request = b""
    while b"\r\n\r\n" not in request and len(request) < 65536:
        chunk = conn.recv(4096)
        if not chunk:
            break
        request += chunk
    return request


def reset_after_hello(addr, port):
    sock = listener(addr, port)
    while True:
        raw, peer = sock.accept()
        raw.settimeout(10)
        first = raw.recv(4096)
        reset(raw)
        print(f"{peer[0]}:{peer[1]} read {len(first)} bytes, reset", flush=True)


def reset_mid_response(addr, port, cert, key):
    ctx = server_context(cert, key)
    sock = listener(addr, port)
    while True:
        raw, peer = sock.accept()
        raw.settimeout(10)
        try:
            conn = ctx.wrap_socket(raw, server_side=True)
            read_head(conn)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n" + b"x" * 65536)
            # Let the bytes leave before the reset overtakes them in the kernel.
            time.sleep(0.5)
            reset(conn)
            print(f"{peer[0]}:{peer[1]} sent 65536 of 1048576 body bytes, reset", flush=True)
        except (OSError, ssl.SSLError) as e:
            print(f"{peer[0]}:{peer[1]} failed: {e}", flush=True)
            raw.close()


def stop_reading(addr, port, cert, key):
    ctx = server_context(cert, key)
    sock = listener(addr, port, rcvbuf=65536)
    held = []
    while True:
        raw, peer = sock.accept()
        raw.settimeout(10)
        conn = ctx.wrap_socket(raw, server_side=True)
        head = read_head(conn)
        held.append(conn)
        print(f"{peer[0]}:{peer[1]} stalled after a {len(head)}-byte head", flush=True)


def client_hello(sni):
    """The bytes of a real ClientHello for SNI, from a TLS client over memory BIOs."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def slow_hello(addr, port, sni, interval):
    hello = client_hello(sni)
    started = time.monotonic()
    sent = 0
    why = "every byte sent"
    with socket.create_connection((addr, int(port)), timeout=10) as sock:
        sock.settimeout(float(interval))
        for byte in hello:
            try:
                sock.sendall(bytes([byte]))
                sent += 1
                # Wait out the interval while watching for the reset or a close.
                data = sock.recv(4096)
                why = f"received {len(data)} bytes" if data else "closed by the peer (FIN)"
                break
            except socket.timeout:
                continue
            except OSError as e:
                why = f"{e.strerror or e}"
                break
    took = time.monotonic() - started
    print(f"ended after {took:.1f} s, {sent} of {len(hello)} bytes sent: {why}", flush=True)


def main(argv):
    commands = {
        "reset-after-hello": (reset_after_hello, 2),
        "reset-mid-response": (reset_mid_response, 4),
        "stop-reading": (stop_reading, 4),
        "slow-hello": (slow_hello, 4),
    }
    if len(argv) < 2 or argv[1] not in commands or len(argv) - 2 != commands[argv[1]][1]:
        sys.exit(__doc__)
    command, _ = commands[argv[1]]
    command(*argv[2:])


if __name__ == "__main__":
    main(sys.argv)
