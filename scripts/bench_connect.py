"""The connect scenario: handshakes + subscribes per second beside the floor, and idle memory.

Two measurements, floor and livepush alike, each server on the server core with its
own redis-server:

- memory: a fresh server, 50 warm connections, then --memory-conns idle subscribed
  connections; RSS growth per connection 11 s later, every socket pinged twice by
  then (livepush gets a 3 s ping interval: it builds a socket's websockets protocol
  at its first ping). The floor never pings.
- rate: a second pair of servers in their default configuration; --connect-rounds
  rounds, each connecting --connect-conns clients (two loadgen processes) to each
  server, subscribing in the URL, then the same by a subscribe message; the
  connections close between bursts and the next waits until the server is idle.
  A burst's time runs from the first connect() to the last `subscribed` frame;
  handshakes per second = subscribed / that time, the median of the rounds.

Clients offer permessage-deflate unless --no-connect-deflate, as browsers do (the
floor declines it; livepush's default, shared, accepts it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
from dataclasses import dataclass, field

from bench_servers import FLOOR_VARIANT, LIVEPUSH_VARIANT, Variant, server_process, wait_idle
from benchkit import (
    Target,
    connect_all,
    loadgens,
    redis_server,
    tree_cpu_exact,
    tree_rss,
    wait_for_quiet,
)

MEMORY_PING_INTERVAL = 3.0
MODES = ("path", "message")
URL_BAR, MESSAGE_BAR, MEMORY_BAR_KIB = 0.8, 0.6, 3.0


@dataclass
class Burst:
    """One burst of connects to one server."""

    server: str
    mode: str  # "path" (?feed= in the URL) or "message"
    seconds: float
    subscribed: int
    failed: int
    server_cpu_seconds: float

    @property
    def per_second(self) -> float:
        return self.subscribed / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Memory:
    kib_per_conn: float
    conns: int
    connect_seconds: float


@dataclass
class ConnectResult:
    conns: int
    deflate: bool
    bursts: list[Burst] = field(default_factory=list)
    memory: dict[str, Memory] = field(default_factory=dict)  # by server label
    error: str = ""

    def of(self, server: str, mode: str) -> list[Burst]:
        return [b for b in self.bursts if b.server == server and b.mode == mode]

    def rate(self, server: str, mode: str) -> float | None:
        """Handshakes + subscribes per second: the median burst."""
        bursts = self.of(server, mode)
        return statistics.median(b.per_second for b in bursts) if bursts else None

    def targets(self) -> list[Target]:
        offered = "clients offering permessage-deflate" if self.deflate else "plain clients"
        found = []
        for mode, bar, name in (
            ("path", URL_BAR, "connect, subscribing in the URL"),
            ("message", MESSAGE_BAR, "connect, subscribing by message"),
        ):
            floor, livepush = self.rate("floor", mode), self.rate("livepush", mode)
            if not floor or livepush is None:
                found.append(Target(name, "not measured", f">= {bar}x floor", None, self.error))
                continue
            failed = sum(b.failed for b in self.of("livepush", mode))
            rounds = len(self.of("livepush", mode))
            found.append(
                Target(
                    name,
                    f"{livepush / floor:.2f}x floor",
                    f">= {bar}x",
                    livepush >= bar * floor and failed == 0,
                    f"livepush {livepush:,.0f}/s vs floor {floor:,.0f}/s, median of {rounds} "
                    f"bursts of {self.conns:,}, {offered}, {failed} failed",
                )
            )
        memory, floor_memory = self.memory.get("livepush"), self.memory.get("floor")
        if memory is None:
            found.append(Target("idle memory", "not measured", "<= 3 KiB/conn", None, self.error))
        else:
            beside = f", floor {floor_memory.kib_per_conn:.2f}" if floor_memory else ""
            found.append(
                Target(
                    "idle memory",
                    f"{memory.kib_per_conn:.2f} KiB/conn",
                    f"<= {MEMORY_BAR_KIB:g} KiB",
                    memory.kib_per_conn <= MEMORY_BAR_KIB,
                    f"server RSS growth over {memory.conns:,} idle sockets, each pinged "
                    f"twice, {offered}{beside}",
                )
            )
        return found


async def measure_memory(variant: Variant, deflate: bool, args: argparse.Namespace) -> Memory:
    """KiB of server RSS per idle subscribed connection, over args.memory_conns of them."""
    name = f"{variant.slug}-memory"
    async with contextlib.AsyncExitStack() as stack:
        redis_port = await stack.enter_async_context(redis_server(f"{name}-redis"))
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        server, port = await stack.enter_async_context(
            server_process(variant, redis_url, name, ping_interval=MEMORY_PING_INTERVAL)
        )
        # A few warm connections first, so lazily built state is in the baseline.
        warm = await stack.enter_async_context(
            loadgens(port, 50, f"{name}-warm", deflate, args.subscribe, args.deadline)
        )
        await connect_all(warm, 30)
        await asyncio.sleep(1)  # settle: the allocator and the GC after the connect burst
        before = tree_rss(server.pid)
        group = await stack.enter_async_context(
            loadgens(port, args.memory_conns, name, deflate, args.subscribe, args.deadline)
        )
        connected = await connect_all(group, 120)
        # Idle means steady: past two pings and past livepush's 10 s first-request
        # deadline, which keeps a little of each handshake until then.
        await asyncio.sleep(max(2 * MEMORY_PING_INTERVAL + 1, 11))
        after = tree_rss(server.pid)
    subscribed = int(connected["subscribed"])
    kib = (after - before) / 1024 / subscribed if subscribed else float("nan")
    return Memory(kib, subscribed, float(connected["seconds"]))


async def burst(
    variant: Variant, pid: int, port: int, mode: str, label: str, args: argparse.Namespace
) -> Burst:
    """Connect args.connect_conns clients at once; they close when it returns."""
    async with loadgens(
        port, args.connect_conns, label, args.connect_deflate, mode, args.deadline, processes=2
    ) as group:
        cpu_before = tree_cpu_exact(pid) or 0.0
        connected = await connect_all(group, 120)
        cpu_after = tree_cpu_exact(pid) or 0.0
    return Burst(
        variant.server,
        mode,
        float(connected["seconds"]),
        int(connected["subscribed"]),
        int(connected["failed"]),
        cpu_after - cpu_before,
    )


async def run_connect(args: argparse.Namespace) -> ConnectResult:
    result = ConnectResult(args.connect_conns, args.connect_deflate)
    pair = (FLOOR_VARIANT, LIVEPUSH_VARIANT)
    try:
        for variant in pair if args.memory_conns else ():
            await wait_for_quiet(args.quiet_wait, args.max_foreign)
            memory = await measure_memory(variant, args.connect_deflate, args)
            result.memory[variant.server] = memory
            say(f"{variant.label} memory: {memory.kib_per_conn:.2f} KiB/conn over {memory.conns}")
        async with contextlib.AsyncExitStack() as stack:
            servers = []
            for variant in pair:
                name = f"connect-{variant.slug}"
                redis_port = await stack.enter_async_context(redis_server(f"{name}-redis"))
                url = f"redis://127.0.0.1:{redis_port}/0"
                server, port = await stack.enter_async_context(server_process(variant, url, name))
                servers.append((variant, server.pid, port))
            for round_number in range(1, args.connect_rounds + 1):
                for mode in MODES:
                    for variant, pid, port in servers:
                        await wait_idle(pid)
                        await wait_for_quiet(args.quiet_wait, args.max_foreign)
                        label = f"connect-{variant.slug}-{mode}-{round_number}"
                        done = await burst(variant, pid, port, mode, label, args)
                        result.bursts.append(done)
                        say(
                            f"{variant.label} connect by {mode}, round {round_number}: "
                            f"{done.subscribed} in {done.seconds:.3f} s = "
                            f"{done.per_second:,.0f}/s, {done.failed} failed, server CPU "
                            f"{done.server_cpu_seconds / max(done.subscribed, 1) * 1e6:.0f} "
                            "µs/conn"
                        )
    except (RuntimeError, TimeoutError, OSError) as error:
        result.error = f"failed: {error}"
        say(f"connect scenario {result.error}")
    return result


def say(text: str) -> None:
    print(f"  {text}", file=sys.stderr, flush=True)
