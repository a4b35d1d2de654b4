#!/usr/bin/env python3
"""Print what connecting N WebSocket subscribers costs a server, in CPU.

    .venv/bin/python scripts/connect_cost.py --conns 5000 [--subscribe path|message]
        [--server livepush|floor] [--deflate]

Starts `livepush serve` (embedded broker), or the Python floor
(scripts/floor_server.py, on a redis-server of its own), on a free loopback port,
connects N clients with the compiled load generator (scripts/loadgen, built by
scripts/bench.py), and prints the load generator's connect time and the server's user
and system CPU. Bounded: the load generator has a deadline, the servers are stopped
in any case.
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


def wait_for_port(port: int, process: subprocess.Popen[bytes]) -> None:
    """Until `port` accepts (30 s at most, and only while `process` runs)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise SystemExit(f"nothing listens on port {port}") from None
            time.sleep(0.05)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--conns", type=int, default=5000)
    parser.add_argument(
        "--subscribe",
        choices=["path", "message"],
        default="path",
        help="in the URL (?feed=, as livepush.js does) or by a message after the open",
    )
    parser.add_argument("--server", choices=["livepush", "floor"], default="livepush")
    parser.add_argument("--deflate", action="store_true", help="clients offer permessage-deflate")
    args = parser.parse_args()
    if not LOADGEN.exists():
        print("build the load generator first: run scripts/bench.py once", file=sys.stderr)
        return 2
    port = free_port()
    redis: subprocess.Popen[bytes] | None = None
    if args.server == "floor":
        redis_port = free_port()
        redis = subprocess.Popen(
            ["redis-server", "--port", str(redis_port), "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        wait_for_port(redis_port, redis)
        command = [sys.executable, str(ROOT / "scripts/floor_server.py"), "--port", str(port)]
        command += ["--redis-url", f"redis://127.0.0.1:{redis_port}/0", "--feed", "cost"]
        server = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    else:
        env = {**os.environ, "LIVEPUSH_LOG_LEVEL": "warning", "LIVEPUSH_PUBLISH_TOKENS": "cost"}
        command = [str(ROOT / ".venv/bin/livepush"), "serve", "--port", str(port), "--no-demo"]
        server = subprocess.Popen(command, env=env)
    try:
        wait_for_port(port, server)
        process = psutil.Process(server.pid)
        before = process.cpu_times()
        command = [str(LOADGEN), "--port", str(port), "--feed", "cost", "--conns", str(args.conns)]
        command += ["--duration", "1", "--deadline", "60", "--subscribe", args.subscribe]
        command += ["--deflate"] if args.deflate else []
        output = subprocess.run(command, capture_output=True, text=True, timeout=90).stdout
        after = process.cpu_times()
        connect = [
            json.loads(line).get("connect_seconds")
            for line in output.splitlines()
            if "connect_seconds" in line
        ]
        user, system = after.user - before.user, after.system - before.system
        how = f"{args.server}: {args.conns} connects+subscribes by {args.subscribe}"
        print(f"{how}: {connect[0]} s (load generator)")
        print(
            f"server CPU: user {user:.2f} s, system {system:.2f} s, "
            f"{(user + system) / args.conns * 1e6:.0f} µs per connection (includes 1 s idle)"
        )
    finally:
        server.terminate()
        server.wait(15)
        if redis is not None:
            redis.terminate()
            redis.wait(15)
    return 0


if __name__ == "__main__":
    sys.exit(main())
