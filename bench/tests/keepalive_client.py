"""A keep-alive HTTP/1.1 load for bench/tests/failover.rs: each connection reused for
PER_CONNECTION requests (then closed and a new one opened, as browsers recycle theirs),
paced at RATE requests/s, reconnecting after any failure, until STOP_FILE exists.

    keepalive_client.py ADDR PORT PATH RATE PER_CONNECTION TIMEOUT STOP_FILE

Each request must return 200 with the same body as the first. Every failure is printed
as it happens ("fail T WHY", T in seconds since the start); at the end one JSON line:
{"ok": N, "failed": N, "connections": N, "elapsed_s": S, "max_gap_s": S,
"max_gap_at_s": T}, where the
gap is the longest time between two successful responses (or from the start to the
first one).
"""
import http.client
import json
import os
import sys
import time


def main():
    addr, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    rate, per_connection = float(sys.argv[4]), int(sys.argv[5])
    timeout, stop_file = float(sys.argv[6]), sys.argv[7]
    start = time.monotonic()
    last_ok = start
    max_gap, max_gap_at = 0.0, 0.0
    ok = failed = connections = 0
    body_seen = None
    conn = None
    on_this_connection = 0
    next_at = start
    while not os.path.exists(stop_file):
        now = time.monotonic()
        if now < next_at:
            time.sleep(next_at - now)
        next_at = max(next_at + 1.0 / rate, time.monotonic() - 1.0)
        try:
            if conn is not None and on_this_connection >= per_connection:
                conn.close()
                conn = None
            if conn is None:
                conn = http.client.HTTPConnection(addr, port, timeout=timeout)
                connections += 1
                on_this_connection = 0
            on_this_connection += 1
            conn.request("GET", path)
            response = conn.getresponse()
            body = response.read()
            if response.status != 200:
                raise RuntimeError(f"status {response.status}")
            if body_seen is None:
                body_seen = body
            elif body != body_seen:
                raise RuntimeError(f"body of {len(body)} bytes differs from the first")
        except Exception as error:  # any failure: say it, reconnect
            failed += 1
            print(f"fail {time.monotonic() - start:.3f} {type(error).__name__}: {error}", flush=True)
            if conn is not None:
                conn.close()
            conn = None
            continue
        now = time.monotonic()
        if now - last_ok > max_gap:
            max_gap, max_gap_at = now - last_ok, now - start
        last_ok = now
        ok += 1
    print(
        json.dumps(
            {
                "ok": ok,
                "failed": failed,
                "connections": connections,
                "elapsed_s": round(time.monotonic() - start, 3),
                "max_gap_s": round(max_gap, 3),
                "max_gap_at_s": round(max_gap_at, 3),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
