#!/usr/bin/env python3
"""Print what the longest turns of `livepush serve`'s loop do during a connect burst.

    .venv/bin/python scripts/connect_turns.py [--conns 10000] [--subscribe path|message]

Starts `livepush serve` (embedded broker, pinned to core 0) with a `sitecustomize`
module that counts, for each turn of its loop, the connections accepted
(`FirstRequest.connection_made`) and the first requests read
(`FirstRequest.data_received`), and times every garbage collection; connects --conns
clients with the compiled load generator (built by scripts/bench.py) on core 1;
stops the server and prints: accepts per turn, the longest turns with what they did,
and the longest collections. A turn is one pass of the loop's ready callbacks: a
callback re-armed with call_soon runs once per turn.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from connect_cost import LOADGEN, ROOT, free_port, wait_for_port  # a script beside this one

COUNTER = """
import atexit, collections, gc, json, os, time
import asyncio
from livepush.transports import uvicorn as transports

turn = [0]
accepts, reads = collections.Counter(), collections.Counter()
turns, collections_ms, started = [], [], {}

def tick():
    now = time.perf_counter()
    if "last" in started and (accepts[turn[0]] or reads[turn[0]]):
        turns.append(((now - started["last"]) * 1000, accepts[turn[0]], reads[turn[0]]))
    started["last"] = now
    turn[0] += 1
    asyncio.get_running_loop().call_soon(tick)

made, received = transports.FirstRequest.connection_made, transports.FirstRequest.data_received

def connection_made(self, transport):
    if not accepts and not reads:
        asyncio.get_running_loop().call_soon(tick)
    accepts[turn[0]] += 1
    made(self, transport)

def data_received(self, data):
    reads[turn[0]] += 1
    received(self, data)

transports.FirstRequest.connection_made = connection_made
transports.FirstRequest.data_received = data_received

def on_gc(phase, info):
    if phase == "start":
        started["gc"] = time.perf_counter()
    elif "gc" in started:
        collections_ms.append(((time.perf_counter() - started["gc"]) * 1000, info["generation"]))

gc.callbacks.append(on_gc)

def report():
    with open(os.environ["CONNECT_TURNS_REPORT"], "w") as out:
        json.dump({"accepts": list(accepts.values()), "turns": turns, "gc": collections_ms}, out)

atexit.register(report)
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--conns", type=int, default=10000)
    parser.add_argument("--subscribe", choices=["path", "message"], default="path")
    args = parser.parse_args()
    if not LOADGEN.exists():
        print("build the load generator first: run scripts/bench.py once", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "sitecustomize.py").write_text(COUNTER)
        report = Path(folder, "report.json")
        port = free_port()
        env = {
            **os.environ,
            "PYTHONPATH": folder,
            "CONNECT_TURNS_REPORT": str(report),
            "LIVEPUSH_LOG_LEVEL": "warning",
            "LIVEPUSH_PUBLISH_TOKENS": "cost",
        }
        command = ["taskset", "-c", "0", str(ROOT / ".venv/bin/livepush"), "serve"]
        server = subprocess.Popen([*command, "--port", str(port), "--no-demo"], env=env)
        try:
            wait_for_port(port, server)
            time.sleep(1)
            load = ["taskset", "-c", "1", str(LOADGEN), "--port", str(port), "--feed", "cost"]
            load += ["--conns", str(args.conns), "--duration", "1", "--deadline", "60"]
            load += ["--subscribe", args.subscribe, "--deflate"]
            output = subprocess.run(load, capture_output=True, text=True, timeout=90).stdout
            connect = [
                json.loads(line)["connect_seconds"]
                for line in output.splitlines()
                if "connect_seconds" in line
            ]
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(30)
        found = json.loads(report.read_text())
    accepts, turns = found["accepts"], found["turns"]
    print(f"{args.conns} connects by {args.subscribe}: {connect[0]} s (load generator)")
    print(f"accepts: {sum(accepts)} in {len(accepts)} turns, at most {max(accepts)} in one")
    print(
        f"turns that accepted or read a first request: {len(turns)}, median "
        f"{sorted(t[0] for t in turns)[len(turns) // 2]:.2f} ms"
    )
    longest = sorted(turns, reverse=True)[:10]
    print(
        "longest turns (ms, accepts, first requests read): "
        + ", ".join(f"{ms:.1f}/{a}/{r}" for ms, a, r in longest)
    )
    gcs = sorted(found["gc"], reverse=True)[:5]
    print(
        f"garbage collections: {len(found['gc'])}, longest (ms, generation): "
        + ", ".join(f"{ms:.1f}/{gen}" for ms, gen in gcs)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
