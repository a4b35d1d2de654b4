#!/usr/bin/env python3
"""Print what one ~1 KiB send costs this machine's kernel, from C: the per-core ceiling.

    .venv/bin/python scripts/send_cost.py [--conns 5000] [--rounds 100] [--size 1100]

Builds scripts/loadgen/sendcost.c with gcc (into scripts/loadgen/bin, like the load
generator) and runs it: a C loop writes one pre-built buffer to N loopback TCP
sockets (pinned to core 0) while a reader process drains them (core 1). No server
can deliver more per core than 1 / (its CPU per send), whatever its language: this is
the figure to read bench.py's "deliveries/s per core" against.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "scripts" / "loadgen" / "sendcost.c"
BINARY = ROOT / "scripts" / "loadgen" / "bin" / "sendcost"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--conns", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--size", type=int, default=1100, help="bytes per send")
    args = parser.parse_args()
    if not BINARY.exists() or BINARY.stat().st_mtime < SOURCE.stat().st_mtime:
        BINARY.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["gcc", "-O2", "-Wall", "-o", str(BINARY), str(SOURCE)], check=True)
    command = [str(BINARY), "--conns", str(args.conns), "--rounds", str(args.rounds)]
    command += ["--size", str(args.size)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    return result.returncode


if __name__ == "__main__":
    raise SystemExit(main())
