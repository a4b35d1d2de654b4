#!/usr/bin/env python3
"""Print what connecting N WebSocket subscribers costs a livepush server, in CPU.

    .venv/bin/python scripts/connect_cost.py --conns 5000 [--subscribe path|message]

Starts `livepush serve` (embedded broker) on a free loopback port, connects N clients
with the compiled load generator (scripts/loadgen, built by scripts/bench.py), and
prints the load generator's connect time and the server's user and system CPU.
Bounded: the load generator has a deadline, the server is stopped in any case.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
LOADGEN = ROOT / "scripts" / "loadgen" / "bin" / "loadgen"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--conns", type=int, default=5000)
    parser.add_argument(
        "--subscribe",
        choices=["path", "message"],
        default="path",
        help="in the URL (?feed=, as livepush.js does) or by a message after the open",
    )
    args = parser.parse_args()
    if not LOADGEN.exists():
        print("build the load generator first: run scripts/bench.py once", file=sys.stderr)
        return 2
    port = free_port()
    env = {**os.environ, "LIVEPUSH_LOG_LEVEL": "warning", "LIVEPUSH_PUBLISH_TOKENS": "cost"}
    server = subprocess.Popen(
        [str(ROOT / ".venv/bin/livepush"), "serve", "--port", str(port), "--no-demo"], env=env
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("livepush did not start") from None
                time.sleep(0.05)
        process = psutil.Process(server.pid)
        before = process.cpu_times()
        command = [str(LOADGEN), "--port", str(port), "--feed", "cost", "--conns", str(args.conns)]
        command += ["--duration", "1", "--deadline", "60", "--subscribe", args.subscribe]
        output = subprocess.run(command, capture_output=True, text=True, timeout=90).stdout
        after = process.cpu_times()
        connect = [
            json.loads(line).get("connect_seconds")
            for line in output.splitlines()
            if "connect_seconds" in line
        ]
        user, system = after.user - before.user, after.system - before.system
        how = f"{args.conns} connects+subscribes by {args.subscribe}"
        print(f"{how}: {connect[0]} s (load generator)")
        print(
            f"server CPU: user {user:.2f} s, system {system:.2f} s, "
            f"{(user + system) / args.conns * 1e6:.0f} µs per connection (includes 1 s idle)"
        )
    finally:
        server.terminate()
        server.wait(15)
    return 0


if __name__ == "__main__":
    sys.exit(main())
