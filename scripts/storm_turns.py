#!/usr/bin/env python3
"""Print what the calm readers' slowest entries waited for during bench.py's storm scenario.

    .venv/bin/python scripts/storm_turns.py [--slow-ms 25] [bench.py storm options]

Runs `scripts/bench.py --scenarios storm --repeat 1` (any further options go to it) with
a `sitecustomize` module in the server that records, for every entry the calm readers
get: when the harness sent it (the entry's `meta.t`), when the node stamped it for
Redis (`accepted`, just before the publish script is sent), when the node's publish
call began and returned (`RedisBroker.publish`: Redis's own work is microseconds, so a
long call is time the node took to send the script or to read the answer), when its
pub/sub message reached the hub, and when its fan-out ended.
It also records every turn of the loop longer than 4 ms: the connections accepted, the
first requests read, the upgrades answered (`take_over`), the joiners let through the
hub's turnstile, and the milliseconds spent in garbage collection, in the handshake
pacer (`_Handshakes.next_turn`), in the hub's actions (`Hub._perform`: joins' writes
and fan-outs), in the feed core's joins (`Feed.join`, `Feed.join_history`) and on the
CPU at all; and each batch the turnstile timed. A turn is one pass of the loop's ready callbacks (a
callback re-armed with call_soon runs once per turn).

It prints the bench's storm targets, then each entry that took over --slow-ms from the
harness to its last write, with the long turns it waited behind. The recorder's
per-turn callback keeps the loop polling instead of sleeping, and its records cost time
too: the figures of an instrumented run say where the time went, not what the bench
would have measured.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

RECORDER = r"""
import asyncio, collections, gc, json, os, time
if b"serve" in open("/proc/self/cmdline", "rb").read().split(b"\0"):
    import orjson
    from livepush import hub as _hub, turnstile as _turnstile
    from livepush.transports import uvicorn as _transports

    out = open(os.path.join(os.environ["STORM_TURNS_DIR"], f"{os.getpid()}.jsonl"), "a")
    counts, spent = collections.Counter(), collections.Counter()
    last = {}

    def write(record):
        out.write(json.dumps(record) + "\n")

    def tick():
        now, cpu = time.time(), time.thread_time()
        if "wall" in last and now - last["wall"] > 0.004:
            ms = {key: round(value * 1e3, 2) for key, value in spent.items()}
            ms["cpu"] = round((cpu - last["cpu"]) * 1e3, 2)
            write({"turn": [last["wall"], now], "counts": dict(counts), "ms": ms})
        counts.clear()
        spent.clear()
        last["wall"], last["cpu"] = now, cpu
        asyncio.get_running_loop().call_soon(tick)

    def counted(cls, name, key, first=False):
        original = getattr(cls, name)

        def wrapper(*args, **kwargs):
            if first and not last:
                last["started"] = True
                asyncio.get_running_loop().call_soon(tick)
            counts[key] += 1
            return original(*args, **kwargs)

        setattr(cls, name, wrapper)

    inside = collections.Counter()  # calls under way per key: a nested one (Feed.join
    # inside Feed.join_history, a _perform inside a _perform) is not counted twice

    def timed(cls, name, key):
        original = getattr(cls, name)

        def wrapper(*args, **kwargs):
            if inside[key]:
                return original(*args, **kwargs)
            inside[key] += 1
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                inside[key] -= 1
                spent[key] += time.perf_counter() - started

        setattr(cls, name, wrapper)

    counted(_transports.FirstRequest, "connection_made", "accepts", first=True)
    counted(_transports.FirstRequest, "data_received", "reads")
    counted(_transports.FirstRequest, "take_over", "upgrades")
    timed(_transports._Handshakes, "next_turn", "pacer")
    timed(_hub.Hub, "_perform", "hub")
    from livepush import feed as _feed
    timed(_feed.Feed, "join", "join")
    timed(_feed.Feed, "join_history", "join")

    turn = _turnstile.Turnstile._turn

    def turnstile_turn(self, loop):
        started, batch, now = self._batch_started, self._batch, time.perf_counter()
        turn(self, loop)
        counts["resumed"] += self.passed
        if started is not None and batch:
            write({"gate": [batch, (now - started) * 1e3, self.per_turn]})

    _turnstile.Turnstile._turn = turnstile_turn

    gc_started = []

    def on_gc(phase, info):
        if phase == "start":
            gc_started[:] = [time.perf_counter()]
        elif gc_started:
            spent["gc"] += time.perf_counter() - gc_started[0]

    gc.callbacks.append(on_gc)

    deliver, inbox = _hub.Hub.deliver, _hub.Hub._deliver_inbox

    def hub_deliver(self, event):
        try:
            sent = orjson.loads(event.payload)["entry"]["meta"]["t"] / 1e9
        except (KeyError, TypeError, ValueError):
            sent = 0.0
        if sent:
            write({"entry": event.seq, "feed": event.feed, "sent": sent,
                   "accepted": event.accepted, "delivered": time.time()})
        deliver(self, event)

    def hub_inbox(self):
        started = time.time()
        inbox(self)
        write({"fanout": [started, time.time()]})
        out.flush()

    _hub.Hub.deliver, _hub.Hub._deliver_inbox = hub_deliver, hub_inbox

    from livepush.brokers import redis as _broker
    publish = _broker.RedisBroker.publish

    async def broker_publish(self, *args, **kwargs):
        began = time.time()
        try:
            return await publish(self, *args, **kwargs)
        finally:
            write({"publish": [began, time.time()]})

    _broker.RedisBroker.publish = broker_publish
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slow-ms", type=float, default=25.0)
    args, bench_args = parser.parse_known_args()
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "sitecustomize.py").write_text(RECORDER)
        env = {**os.environ, "PYTHONPATH": folder, "STORM_TURNS_DIR": folder}
        command = [sys.executable, str(ROOT / "scripts" / "bench.py"), "--scenarios", "storm"]
        command += ["--repeat", "1", *bench_args]
        bench = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
        for line in bench.stdout.splitlines():
            if line.startswith("target storm"):
                print(line)
        records = [
            json.loads(line)
            for report in Path(folder).glob("*.jsonl")
            for line in report.read_text().splitlines()
        ]
    turns = [r for r in records if "turn" in r]
    fanouts = sorted(r["fanout"] for r in records if "fanout" in r)
    entries = sorted((r for r in records if "entry" in r), key=lambda r: r["sent"])
    publishes = [r["publish"] for r in records if "publish" in r]
    print(f"\n{len(entries)} entries, {len(turns)} turns of the loop over 4 ms")
    gates = [r["gate"] for r in records if "gate" in r]
    if gates:
        print(
            f"turnstile: {len(gates)} batches timed, {sum(g[0] for g in gates)} joiners, "
            f"{sum(g[1] for g in gates) / len(gates):.2f} ms a batch on average, the "
            f"longest {max(g[1] for g in gates):.2f} ms ({max(gates, key=lambda g: g[1])[0]} "
            "joiners)"
        )
    for entry in entries:
        end = next((f[1] for f in fanouts if f[1] >= entry["delivered"]), None)
        if end is None or (end - entry["sent"]) * 1e3 <= args.slow_ms:
            continue
        sent = entry["sent"]
        print(
            f"entry {entry['feed']} {entry['entry']}: {(end - sent) * 1e3:.1f} ms to its last "
            f"write; accepted at {(entry['accepted'] - sent) * 1e3:.1f}, at the hub at "
            f"{(entry['delivered'] - sent) * 1e3:.1f} ms"
        )
        call = next((p for p in publishes if p[0] <= entry["accepted"] <= p[1]), None)
        if call is not None:
            print(
                f"  its publish call from {(call[0] - sent) * 1e3:.1f} to "
                f"{(call[1] - sent) * 1e3:.1f} ms"
            )
        for turn in turns:
            started, ended = turn["turn"]
            if ended >= sent and started <= end:
                print(
                    f"  turn at {(started - sent) * 1e3:+.1f} ms, {(ended - started) * 1e3:.1f} "
                    f"ms: {turn['counts']} {turn['ms']}"
                )
    return bench.returncode


if __name__ == "__main__":
    sys.exit(main())
