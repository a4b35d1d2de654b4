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

`--perf` also samples the server with `perf record` (Linux perf, run as root) while
its clients connect and prints where its CPU went in that window, per connection: the
kernel (accept, TCP, reads, writes), the interpreter (libpython: every line of Python,
its allocations and collections), uvloop and the rest. Run it for both servers to see
which part of a connection livepush pays more for than the floor.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

PERF_HZ = 999

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
    parser.add_argument(
        "--perf", action="store_true", help="split the server's CPU while connecting (perf)"
    )
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
        # perf attaches first: its set-up is not counted in the server's CPU below.
        sampler = start_perf(server.pid) if args.perf else None
        before = process.cpu_times()
        started = time.monotonic()
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
        if sampler is not None:
            window = (started, started + float(connect[0]))
            shares = perf_split(sampler, window)
            per_conn = {part: n / PERF_HZ / args.conns * 1e6 for part, n in shares.items()}
            print(
                f"while connecting (perf, {sum(shares.values())} samples at {PERF_HZ} Hz), "
                "µs per connection: "
                + ", ".join(f"{part} {us:.1f}" for part, us in per_conn.items())
                + f", all {sum(per_conn.values()):.1f}"
            )
    finally:
        server.terminate()
        server.wait(15)
        if redis is not None:
            redis.terminate()
            redis.wait(15)
    return 0


def start_perf(pid: int) -> tuple[subprocess.Popen[bytes], Path]:
    """`perf record` on `pid`, its clock CLOCK_MONOTONIC (time.monotonic's)."""
    data = Path(f"/tmp/connect-cost-{pid}.perf")
    command = ["perf", "record", "-q", "-k", "mono", "-F", str(PERF_HZ), "-p", str(pid)]
    sampler = subprocess.Popen([*command, "-o", str(data)], stderr=subprocess.DEVNULL)
    time.sleep(0.5)  # perf attaches before the first client
    return sampler, data


def perf_split(
    sampler: tuple[subprocess.Popen[bytes], Path], window: tuple[float, float]
) -> dict[str, int]:
    """The server's samples within `window` (monotonic seconds), by where they ran."""
    process, data = sampler
    process.send_signal(signal.SIGINT)  # perf writes its file and exits
    process.wait(30)
    script = ["perf", "script", "-i", str(data), "-F", "time,ip,dso"]
    lines = subprocess.run(script, capture_output=True, text=True, check=True).stdout
    data.unlink()
    parts = {"kernel": 0, "interpreter": 0, "uvloop": 0, "other": 0}
    for line in lines.splitlines():
        stamp, _, rest = line.strip().partition(":")
        try:
            when = float(stamp)
        except ValueError:
            continue
        if not window[0] <= when <= window[1]:
            continue
        dso = rest.rpartition("(")[2]
        if "kernel" in dso:
            parts["kernel"] += 1
        elif "libpython" in dso:
            parts["interpreter"] += 1
        elif "/uvloop/" in dso:
            parts["uvloop"] += 1
        else:
            parts["other"] += 1
    return parts


if __name__ == "__main__":
    sys.exit(main())
