"""Records the first flight a TLS client sends: listens on 127.0.0.1:PORT, accepts one
connection, reads until a complete ClientHello (across records) has arrived, writes it
as hex to OUT and closes. No TLS is spoken; the client just sees the connection drop.

    python3 capture.py PORT OUT.hex
"""
import socket
import struct
import sys


def hello_end(stream):
    """Offset just past the record that completes the ClientHello, or None."""
    message, offset = b"", 0
    while offset + 5 <= len(stream):
        length = struct.unpack(">H", stream[offset + 3:offset + 5])[0]
        if offset + 5 + length > len(stream):
            return None
        message += stream[offset + 5:offset + 5 + length]
        offset += 5 + length
        if len(message) >= 4 and len(message) >= 4 + int.from_bytes(message[1:4], "big"):
            return offset
    return None


def main():
    port, out = int(sys.argv[1]), sys.argv[2]
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(1)
    listener.settimeout(60)
    conn, _ = listener.accept()
    conn.settimeout(5)
    stream = b""
    while True:
        try:
            data = conn.recv(65536)
        except socket.timeout:
            break
        if not data:
            break
        stream += data
        end = hello_end(stream)
        if end:
            stream = stream[:end]
            break
    with open(out, "w") as f:
        f.write(stream.hex() + "\n")
    print(out, len(stream))
    conn.close()
    listener.close()


main()
