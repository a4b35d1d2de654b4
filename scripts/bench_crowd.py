"""The crowd: 100,000 subscribers on this machine, one entry per second to every one of them.

One process may hold at most 20,000 open files here, so livepush runs with
--crowd-workers (6) worker processes and the connections come from six loadgen
processes (about 16,700 each), every one from its own loopback source address (one
address has only ~28,000 ephemeral ports to one server port). At this size the server
and the load share both cores: neither fits on one (the server alone needs about a
core-second per 100,000 deliveries, the loadgens nearly as much), so nothing is pinned.

Measured: the connect (time, subscribed, failed, open files per worker), then
--crowd-duration s of --crowd-rate entries/s: deliveries, loss, p50/p99/max latency,
server CPU and each core's load; memory is the server's RSS growth (every worker and
the supervisor) per subscribed connection, taken after the window (every socket has
been pinged by then).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from dataclasses import dataclass, field

from bench_servers import Variant, open_files, server_process
from benchkit import (
    OPEN_FILES_CAP,
    LivepushPublisher,
    MachineSample,
    MachineUse,
    Target,
    body_for_size,
    connect_all,
    loadgens,
    merged_hist,
    percentile_ms,
    publishing_during,
    redis_server,
    tree_cpu_exact,
    tree_rss,
    wait_for_quiet,
)


@dataclass
class CrowdResult:
    conns: int
    workers: int
    loadgens: int
    rate: float
    connect_seconds: float = 0.0
    subscribed: int = 0
    failed: int = 0
    open_files: list[int] = field(default_factory=list)  # per server process, largest first
    entries: int = 0
    publish_errors: int = 0
    deliveries: int = 0
    expected: int = 0
    lost: int = 0
    dups: int = 0
    gaps: int = 0
    closed: int = 0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    server_cpu_pct: float = 0.0
    cores_busy: list[float] = field(default_factory=list)
    loadgen_cpu_pct: float = 0.0
    kib_per_conn: float = 0.0
    error: str = ""

    def describe(self) -> str:
        return (
            f"{self.subscribed:,}/{self.conns:,} subscribed in {self.connect_seconds:.1f} s "
            f"({self.failed} failed; open files per server process "
            f"{', '.join(map(str, self.open_files))}); {self.entries} entries at "
            f"{self.rate:g}/s: deliveries {self.deliveries:,}/{self.expected:,}, lost "
            f"{self.lost} dups {self.dups} gaps {self.gaps} closed {self.closed}; p50 "
            f"{self.p50_ms:.0f} p99 {self.p99_ms:.0f} max {self.max_ms:.0f} ms; server CPU "
            f"{self.server_cpu_pct:.0f} % of a core, loadgens {self.loadgen_cpu_pct:.0f} %, "
            "cores busy " + " ".join(f"{busy:.0%}" for busy in self.cores_busy) + "; "
            f"{self.kib_per_conn:.2f} KiB/conn"
        )

    def targets(self) -> list[Target]:
        name = f"{self.conns:,} subscribers"
        if not self.subscribed:
            return [Target(name, "not reached", "all subscribed, no loss", None, self.error)]
        ok = (
            self.subscribed == self.conns
            and self.expected > 0
            and not (self.lost or self.dups or self.gaps or self.closed or self.publish_errors)
        )
        return [
            Target(
                name,
                f"{self.subscribed:,} subscribed, {self.deliveries:,} deliveries, lost "
                f"{self.lost}, p99 {self.p99_ms:,.0f} ms, {self.kib_per_conn:.2f} KiB/conn",
                "all subscribed, no loss",
                ok,
                f"livepush --workers {self.workers}, {self.loadgens} loadgen processes, "
                f"{self.entries} entries at {self.rate:g}/s; connect {self.connect_seconds:.1f}"
                f" s; p50 {self.p50_ms:,.0f} ms; server CPU {self.server_cpu_pct:.0f} % of a "
                "core, cores busy "
                + " ".join(f"{busy:.0%}" for busy in self.cores_busy)
                + (f"; {self.error}" if self.error else ""),
            )
        ]


async def run_crowd(args: argparse.Namespace) -> CrowdResult:
    result = CrowdResult(args.crowd, args.crowd_workers, args.crowd_loadgens, args.crowd_rate)
    variant = Variant(f"livepush {args.crowd_workers} workers", "livepush", args.crowd_workers)
    body = body_for_size(args.entry_size)
    every_core = set(range(os.cpu_count() or 1))
    try:
        async with contextlib.AsyncExitStack() as stack:
            redis_port = await stack.enter_async_context(redis_server("crowd-redis"))
            url = f"redis://127.0.0.1:{redis_port}/0"
            server, port = await stack.enter_async_context(
                server_process(variant, url, "crowd", cores=None)
            )
            publisher = LivepushPublisher(port, 2)
            stack.push_async_callback(publisher.aclose)
            await wait_for_quiet(args.quiet_wait, args.max_foreign)
            rss_before = tree_rss(server.pid)
            group = await stack.enter_async_context(
                loadgens(
                    port,
                    args.crowd,
                    "crowd",
                    False,
                    "path",
                    args.deadline,
                    processes=args.crowd_loadgens,
                    per_process=OPEN_FILES_CAP - 1000,
                    cores=every_core,
                )
            )
            connected = await connect_all(group, args.crowd_timeout)
            result.connect_seconds = float(connected["seconds"])
            result.subscribed = int(connected["subscribed"])
            result.failed = int(connected["failed"])
            result.open_files = open_files(server.pid)
            say(f"crowd connect: {connected}; open files {result.open_files}")
            # Warm-up: every worker's first event pays for lazy imports.
            await publishing_during(
                group,
                publisher,
                args.crowd_rate,
                body,
                2,
                asyncio.sleep(2.0),
                at_least=2.0,
                at_most=3.0,
                drain=args.drain + 20,
            )
            machine_before = MachineSample.take()
            cpu_before = tree_cpu_exact(server.pid) or 0.0
            _, published, reports = await publishing_during(
                group,
                publisher,
                args.crowd_rate,
                body,
                2,
                asyncio.sleep(args.crowd_duration),
                at_least=args.crowd_duration,
                at_most=args.crowd_duration + 1,
                drain=args.drain + 20,
            )
            cpu = (tree_cpu_exact(server.pid) or 0.0) - cpu_before
            machine = MachineUse.between(machine_before, MachineSample.take())
            result.kib_per_conn = (
                (tree_rss(server.pid) - rss_before) / 1024 / max(result.subscribed, 1)
            )
    except (RuntimeError, TimeoutError, OSError, ValueError) as error:
        result.error = f"failed: {error}"
        say(f"crowd scenario {result.error}")
        return result
    hist = merged_hist(reports)
    result.entries = len(published.seqs)
    result.publish_errors = published.errors
    result.deliveries = sum(r["unique"] for r in reports)
    result.expected = sum(r["expected"] for r in reports)
    result.lost = sum(r["lost"] for r in reports)
    result.dups = sum(r["dups"] for r in reports)
    result.gaps = sum(r["gaps"] for r in reports)
    result.closed = sum(r["closed"] for r in reports)
    result.p50_ms, result.p99_ms = percentile_ms(hist, 0.5), percentile_ms(hist, 0.99)
    result.max_ms = max((r["latency_ms"]["max"] for r in reports), default=0.0)
    result.server_cpu_pct = cpu / machine.wall_seconds * 100
    result.cores_busy = machine.core_busy
    loadgen_cpu = sum(r["cpu_seconds"] for r in reports)
    result.loadgen_cpu_pct = loadgen_cpu / machine.wall_seconds * 100
    say(f"crowd: {result.describe()}")
    return result


def say(text: str) -> None:
    print(f"  {text}", file=sys.stderr, flush=True)
