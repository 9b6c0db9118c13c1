#!/usr/bin/env python3
"""Prints loupe decryption-log records (JSON lines) for people: one summary per session
with its error, diagnosis and remedy, then the last record in full.

Usage: show-records.py LOG_FILE
"""
import json
import sys


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    record = None
    with open(sys.argv[1], encoding="utf-8") as log:
        for line in log:
            record = json.loads(line)
            leg = record["client_leg"]
            print(
                f"- {record['client_ip']}:{record['client_port']} -> {record['sni']} "
                f"({record['server_ip']}:{record['server_port']}): {record['action']} / {record['outcome']}, "
                f"client {leg['version']} {leg['cipher']} alpn={leg['alpn']}, "
                f"bytes {record['bytes_client_to_server']} up / {record['bytes_server_to_client']} down"
            )
            if record["error"]:
                print(f"    error:     {record['error']}")
            print(f"    diagnosis: {record['diagnosis']}")
            print(f"    remedy:    {record['remedy']}")
    if record is None:
        print("(no records)")
        return 1
    print("\nlast record in full:")
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
