"""Benchmark: fan-out of one feed to thousands of WebSocket subscribers, livepush beside the floor.

For each server under test (the Python floor, scripts/floor_server.py, then livepush
and its variants) one run measures:

- memory: server RSS growth over --memory-conns idle subscribed connections, per
  connection (a fresh server; the connections come from several loadgen processes,
  since one process may hold at most 20,000 open files), measured 11 s after the
  connects, every socket pinged twice by then (livepush gets a 3 s ping interval);
- connect: seconds for --subscribers clients to connect and be subscribed;
- delivery: --rate entries/s of about --entry-size bytes, in --rounds windows of
  --duration s. Server CPU time (schedstat, summed over its worker processes) over
  the windows divided by the events delivered is the CPU per delivery; latency is
  publisher timestamp to the moment the loadgen read the bytes; lost = expected -
  received, per connection;
- with --max-rate: the rate raised step by step until loss, a p99 over
  --max-rate-p99-factor times the server's own p99 at --rate, a saturated core, or a
  publisher that cannot keep the pace.

The delivery windows are interleaved: every server is up at once with its own
subscribers and its own redis-server, and the rounds go floor, livepush, ..., floor,
livepush, ..., so drift of the machine hits all of them alike. An idle server costs
next to nothing (its heartbeat timers). A window during which other processes used
more than --max-foreign % of a core is measured again (at most three times).

Placement: the servers are pinned to core 0 (taskset); this script, its publisher,
the redis-servers and the loadgens share core 1.

How entries reach each server:
- livepush: POST /v1/feeds/bench/entries with "Authorization: Bearer bench", over a few
  keep-alive HTTP/1.1 connections; the server assigns seqs.
- floor: the publisher builds the event JSON livepush would send (same fields, same
  size, seq assigned here) and PUBLISHes it straight to Redis channel
  floor:feed:bench. The floor's latency therefore has no HTTP ingest in it.
Either way the publisher's send time (Unix ns) travels as entry "meta": {"t": ...}.

The floor declines permessage-deflate, so --compression adds livepush rows with
clients offering it, compared with the plain floor: one with livepush's default
configuration, one with `--ws-compression shared` where the server has it.

`--servers cluster` is another scenario: livepush with 2 workers and --feeds feeds
(200), the subscribers spread evenly over the feeds (and so over both workers), the
entries round-robin over the feeds (--rate is the total), once on one redis-server and
once on a three-primary Redis Cluster (redis-cli --cluster create, no replicas), side
by side in the same interleaved rounds: the cluster's CPU per delivery against the one
Redis's. Run it with a --rate that is a multiple of --feeds, e.g.
    .venv/bin/python scripts/bench.py --servers cluster --rate 200 --memory-conns 0

Run: .venv/bin/python scripts/bench.py [--servers floor,livepush] [--subscribers 5000]
     [--rate 10] [--duration 10] [--rounds 3] [--entry-size 1024] [--workers 2]
     [--compression] [--memory-conns 10000] [--max-rate] [--json results.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import uvloop
from benchkit import (
    FEED,
    ROOT,
    TOKEN,
    Child,
    FloorPublisher,
    LivepushPublisher,
    Loadgen,
    MachineSample,
    MachineUse,
    Publisher,
    body_for_size,
    build_loadgen,
    connect_all,
    free_port,
    loadgens,
    log_file,
    log_tail,
    percentile_ms,
    publish_paced,
    redis_cluster,
    redis_server,
    spawned,
    tree_cpu_exact,
    tree_cpu_seconds,
    tree_rss,
    wait_for_port,
)
from benchkit import HttpConnection as Http

FLOOR = ROOT / "scripts" / "floor_server.py"
VENV_BIN = ROOT / ".venv" / "bin"
SERVER_CORE = 0
LOAD_CORE = 1


@dataclass(frozen=True)
class Variant:
    label: str
    server: str  # "floor" or "livepush"
    workers: int = 1
    deflate: bool = False  # the clients offer permessage-deflate
    server_flags: tuple[str, ...] = ()
    feeds: int = 0  # 0: one feed; N: subscribers and entries spread over N feeds
    cluster: bool = False  # on a three-primary Redis Cluster instead of one redis-server

    @property
    def slug(self) -> str:
        return self.label.replace(" ", "-")


@dataclass
class Window:
    """What one publishing window cost the server and what its subscribers saw."""

    rate: float
    entries: int
    publish_errors: int
    publish_seconds: float  # count/rate when the publisher kept the pace
    deliveries: int
    expected: int
    lost: int
    dups: int
    gaps: int
    closed: int
    cpu_seconds: float  # server, exact (schedstat)
    cpu_tick_seconds: float  # server user+system from psutil, for the kernel share
    cpu_system_seconds: float
    wall_seconds: float
    loadgen_cpu_seconds: float
    loadgen_system_seconds: float
    machine: MachineUse
    hist: dict[int, int]  # latency buckets, see benchkit.bucket_value
    max_ms: float

    def __add__(self, other: Window) -> Window:
        """Two windows of one server as one (the rounds of a run)."""
        hist = dict(self.hist)
        for index, count in other.hist.items():
            hist[index] = hist.get(index, 0) + count
        return Window(
            rate=self.rate,
            entries=self.entries + other.entries,
            publish_errors=self.publish_errors + other.publish_errors,
            publish_seconds=self.publish_seconds + other.publish_seconds,
            deliveries=self.deliveries + other.deliveries,
            expected=self.expected + other.expected,
            lost=self.lost + other.lost,
            dups=self.dups + other.dups,
            gaps=self.gaps + other.gaps,
            closed=self.closed + other.closed,
            cpu_seconds=self.cpu_seconds + other.cpu_seconds,
            cpu_tick_seconds=self.cpu_tick_seconds + other.cpu_tick_seconds,
            cpu_system_seconds=self.cpu_system_seconds + other.cpu_system_seconds,
            wall_seconds=self.wall_seconds + other.wall_seconds,
            loadgen_cpu_seconds=self.loadgen_cpu_seconds + other.loadgen_cpu_seconds,
            loadgen_system_seconds=self.loadgen_system_seconds + other.loadgen_system_seconds,
            machine=self.machine + other.machine,
            hist=hist,
            max_ms=max(self.max_ms, other.max_ms),
        )

    @property
    def deliveries_per_s(self) -> float:
        return self.deliveries / self.publish_seconds if self.publish_seconds else 0.0

    @property
    def cpu_us(self) -> float:
        return self.cpu_seconds / self.deliveries * 1e6 if self.deliveries else float("nan")

    @property
    def server_cpu_pct(self) -> float:
        return self.cpu_seconds / self.wall_seconds * 100 if self.wall_seconds else 0.0

    @property
    def system_share(self) -> float:
        return self.cpu_system_seconds / self.cpu_tick_seconds if self.cpu_tick_seconds else 0.0

    @property
    def p50_ms(self) -> float:
        return percentile_ms(self.hist, 0.50)

    @property
    def p99_ms(self) -> float:
        return percentile_ms(self.hist, 0.99)

    @property
    def loadgen_cpu_pct(self) -> float:
        return self.loadgen_cpu_seconds / self.wall_seconds * 100 if self.wall_seconds else 0.0

    @property
    def loadgen_us(self) -> float:
        """Loadgen CPU per delivery: what the harness itself pays for one event."""
        if not self.deliveries:
            return float("nan")
        return self.loadgen_cpu_seconds / self.deliveries * 1e6

    def describe(self) -> str:
        loadgen_kernel = (
            self.loadgen_system_seconds / self.loadgen_cpu_seconds
            if self.loadgen_cpu_seconds
            else 0.0
        )
        return (
            f"rate {self.rate:g}/s entries {self.entries} deliveries "
            f"{self.deliveries}/{self.expected} ({self.deliveries_per_s:,.0f}/s) "
            f"cpu {self.cpu_us:.2f} µs/delivery (server {self.server_cpu_pct:.0f} %, "
            f"{self.system_share:.0%} in kernel) p50 {self.p50_ms:.1f} p99 {self.p99_ms:.1f} "
            f"max {self.max_ms:.1f} ms lost {self.lost} dups {self.dups} gaps {self.gaps} "
            f"loadgen {self.loadgen_cpu_pct:.0f} % ({loadgen_kernel:.0%} in kernel), "
            "cores busy "
            + " ".join(f"{share:.0%}" for share in self.machine.core_busy)
            + f", softirq {self.machine.softirq_pct:.0f} %, "
            f"foreign {self.machine.foreign_pct:.0f} %"
        )


@dataclass
class Result:
    variant: Variant
    kib_per_conn: float | None = None
    memory_conns: int = 0
    connect_seconds: float | None = None
    connect_failed: int = 0
    deflate_accepted: int = 0
    rounds: list[Window] = field(default_factory=list)
    steps: list[Window] = field(default_factory=list)
    max_rate: Window | None = None
    max_rate_stop: str = ""
    error: str = ""

    @property
    def window(self) -> Window | None:
        """Every round as one window."""
        if not self.rounds:
            return None
        total = self.rounds[0]
        for other in self.rounds[1:]:
            total = total + other
        return total


# ---------------------------------------------------------------- servers


@functools.cache
def livepush_flags() -> str:
    """`livepush serve --help`, to pass only the flags this version knows."""
    argv = [str(VENV_BIN / "livepush"), "serve", "--help"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60).stdout


@contextlib.asynccontextmanager
async def server_process(
    variant: Variant, redis_url: str, name: str, ping_interval: float | None = None
) -> AsyncIterator[tuple[Child, int]]:
    """Start one server pinned to the server core; yield it once it accepts connections."""
    port = free_port()
    env = dict(os.environ)
    if ping_interval is not None:
        env["LIVEPUSH_PING_INTERVAL"] = str(ping_interval)
    if variant.server == "floor":
        argv = [str(VENV_BIN / "python"), str(FLOOR), "--port", str(port)]
        argv += ["--redis-url", redis_url, "--feed", FEED]
    else:
        argv = [str(VENV_BIN / "livepush"), "serve", "--host", "127.0.0.1", "--port", str(port)]
        argv += ["--redis-url", redis_url]
        flags = livepush_flags()
        env["LIVEPUSH_PUBLISH_TOKENS"] = TOKEN
        env["LIVEPUSH_PUBLISH_RATE"] = "0"  # the harness paces itself
        env["LIVEPUSH_LOG_LEVEL"] = "warning"
        if "--publish-token" in flags:
            argv += ["--publish-token", TOKEN]
        if "--no-demo" in flags:
            argv.append("--no-demo")
        if variant.workers > 1:
            argv += ["--workers", str(variant.workers)]
        argv += variant.server_flags
    if shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        argv = ["taskset", "-c", str(SERVER_CORE), *argv]
    with log_file(name) as log:
        async with spawned(name, argv, stdout=log, stderr=log, env=env) as child:
            await wait_for_port(port, child, 60)
            if variant.server == "livepush":
                await wait_ready(port, child)
            yield child, port


async def wait_ready(port: int, child: Child) -> None:
    """Until /readyz answers 200 (the broker is reachable), at most 60 s."""
    connection = Http(port)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            if child.proc.returncode is not None:
                raise RuntimeError(f"{child.name} exited with {child.proc.returncode}")
            with contextlib.suppress(OSError, asyncio.IncompleteReadError, ValueError):
                status, _ = await asyncio.wait_for(connection.request("GET", "/readyz"), 5)
                if status == 200:
                    return
            connection.close()
            await asyncio.sleep(0.1)
        raise RuntimeError(f"{child.name}: /readyz not 200 within 60 s")
    finally:
        connection.close()


@dataclass
class Contender:
    """A server under test, up, with its subscribers connected and its publisher."""

    result: Result
    server: Child
    group: list[Loadgen]
    publisher: Publisher


# ---------------------------------------------------------------- phases


async def wait_for_quiet(args: argparse.Namespace) -> None:
    """Wait, at most --quiet-wait s, until other processes use under --max-foreign % CPU.

    Other work on a two-core machine shifts every number of a run (a test suite, a
    browser): waiting is cheaper than a wrong table. Two quiet seconds in a row count.
    """
    deadline = time.monotonic() + args.quiet_wait
    quiet_in_a_row = 0
    while time.monotonic() < deadline and quiet_in_a_row < 2:
        before = MachineSample.take()
        await asyncio.sleep(1)
        foreign = MachineUse.between(before, MachineSample.take()).foreign_pct
        quiet_in_a_row = quiet_in_a_row + 1 if foreign <= args.max_foreign else 0
    if quiet_in_a_row < 2 and args.quiet_wait:
        print("  the machine did not go quiet: numbers may be contaminated", file=sys.stderr)


MEMORY_PING_INTERVAL = 3.0


async def measure_memory(variant: Variant, args: argparse.Namespace) -> tuple[float, int]:
    """KiB of server RSS per idle subscribed connection, over args.memory_conns of them."""
    name = f"{variant.slug}-memory"
    async with contextlib.AsyncExitStack() as stack:
        redis_port = await stack.enter_async_context(redis_server(f"{name}-redis"))
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        # livepush builds a socket's websockets protocol at its first ping (or frame):
        # short ping intervals, and a wait past two of them, so that every socket
        # measured is in its steady state. The floor never pings.
        server, port = await stack.enter_async_context(
            server_process(variant, redis_url, name, ping_interval=MEMORY_PING_INTERVAL)
        )
        # A few warm connections first, so lazily built state is in the baseline.
        warm = await stack.enter_async_context(
            loadgens(port, 50, f"{name}-warm", variant.deflate, args.subscribe, args.deadline)
        )
        await connect_all(warm, 30)
        await asyncio.sleep(1)  # settle: the allocator and the GC after the connect burst
        before = tree_rss(server.pid)
        group = await stack.enter_async_context(
            loadgens(port, args.memory_conns, name, variant.deflate, args.subscribe, args.deadline)
        )
        connected = await connect_all(group, 120)
        # Idle means steady: past two pings and past livepush's 10 s first-request
        # deadline, which keeps a little of each handshake until then.
        await asyncio.sleep(max(2 * MEMORY_PING_INTERVAL + 1, 11))
        after = tree_rss(server.pid)
    subscribed = int(connected["subscribed"])
    return ((after - before) / 1024 / subscribed if subscribed else float("nan")), subscribed


async def start_contender(
    stack: contextlib.AsyncExitStack, variant: Variant, args: argparse.Namespace
) -> Contender:
    """Its own redis-server, the server, its subscribers connected (timed), a warm-up."""
    result = Result(variant)
    redis_port = 0
    if variant.cluster:
        redis_url = await stack.enter_async_context(redis_cluster(f"{variant.slug}-redis"))
    else:
        redis_port = await stack.enter_async_context(redis_server(f"{variant.slug}-redis"))
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
    server, port = await stack.enter_async_context(server_process(variant, redis_url, variant.slug))
    group = await stack.enter_async_context(
        loadgens(
            port,
            args.subscribers,
            variant.slug,
            variant.deflate,
            args.subscribe,
            args.deadline,
            variant.feeds,
        )
    )
    await wait_for_quiet(args)
    rss_before = tree_rss(server.pid)
    connected = await connect_all(group, 120)
    print(f"  {variant.label} connect: {connected}", file=sys.stderr, flush=True)
    result.connect_seconds = connected["seconds"]
    result.connect_failed = connected["failed"]
    result.deflate_accepted = connected["deflate_accepted"]
    if not args.memory_conns and connected["subscribed"]:
        await asyncio.sleep(1)
        result.kib_per_conn = (tree_rss(server.pid) - rss_before) / 1024 / connected["subscribed"]
        result.memory_conns = connected["subscribed"]
    publisher: Publisher = (
        FloorPublisher(redis_port)
        if variant.server == "floor"
        else LivepushPublisher(port, args.publishers, variant.feeds)
    )
    stack.push_async_callback(publisher.aclose)
    contender = Contender(result, server, group, publisher)
    # Warm-up: the first events pay for lazy imports and first-time allocations.
    await measure_window(contender, args.rate, 1.0, args)
    return contender


async def measure_window(
    contender: Contender, rate: float, duration: float, args: argparse.Namespace
) -> Window:
    """Publish at `rate` for `duration` s; server CPU and what the loadgens saw."""
    server, group = contender.server, contender.group
    count = max(1, round(rate * duration))
    feeds = contender.result.variant.feeds
    if feeds:  # the same count to every feed, so FIRST..LAST holds for each
        count = -(-count // feeds) * feeds
    for lg in group:
        await lg.send("reset")
    user_before, system_before = tree_cpu_seconds(server.pid)
    exact_before = tree_cpu_exact(server.pid)
    machine_before = MachineSample.take()
    started = time.monotonic()
    published = await publish_paced(
        contender.publisher, rate, count, body_for_size(args.entry_size), args.publishers
    )
    drain_ms = int(args.drain * 1000)
    for lg in group:
        await lg.send(f"report {published.first} {published.last} {drain_ms}")
    reports = await asyncio.gather(*(lg.expect("report", args.drain + 30) for lg in group))
    user_after, system_after = tree_cpu_seconds(server.pid)
    exact_after = tree_cpu_exact(server.pid)
    machine = MachineUse.between(machine_before, MachineSample.take())
    wall = time.monotonic() - started
    ticks = (user_after - user_before) + (system_after - system_before)
    exact = (
        exact_after - exact_before
        if exact_before is not None and exact_after is not None
        else ticks
    )
    if not published.contiguous():
        print(
            f"  note: published seqs are not contiguous ({len(published.seqs)} answers, "
            f"{published.first}..{published.last})",
            file=sys.stderr,
        )
    hist: dict[int, int] = {}
    for report in reports:
        for index, n in report["hist"]:
            hist[index] = hist.get(index, 0) + n
    return Window(
        rate=rate,
        entries=len(published.seqs),
        publish_errors=published.errors,
        publish_seconds=published.seconds,
        deliveries=sum(r["unique"] for r in reports),
        expected=sum(r["expected"] for r in reports),
        lost=sum(r["lost"] for r in reports),
        dups=sum(r["dups"] for r in reports),
        gaps=sum(r["gaps"] for r in reports),
        closed=sum(r["closed"] for r in reports),
        cpu_seconds=exact,
        cpu_tick_seconds=ticks,
        cpu_system_seconds=system_after - system_before,
        wall_seconds=wall,
        loadgen_cpu_seconds=sum(r["cpu_seconds"] for r in reports),
        loadgen_system_seconds=sum(r["cpu_system_seconds"] for r in reports),
        machine=machine,
        hist=hist,
        max_ms=max((r["latency_ms"]["max"] for r in reports), default=0.0),
    )


async def clean_window(
    contender: Contender, rate: float, duration: float, args: argparse.Namespace
) -> Window:
    """measure_window, again (at most 3 tries) while other work shared the machine."""
    for attempt in range(3):
        await wait_for_quiet(args)
        window = await measure_window(contender, rate, duration, args)
        if window.machine.foreign_pct <= args.max_foreign:
            return window
        print(
            f"  try {attempt + 1}: other processes used {window.machine.foreign_pct:.0f} % CPU"
            " during the window",
            file=sys.stderr,
            flush=True,
        )
    return window


def max_rate_stop_reason(step: Window, p99_limit: float, args: argparse.Namespace) -> str:
    """Why a step is not sustained, or "" when it is."""
    if step.machine.foreign_pct > args.max_foreign:
        return f"other processes took {step.machine.foreign_pct:.0f} % CPU at {step.rate:g}/s"
    if step.lost or step.publish_errors or step.closed:
        return (
            f"loss at {step.rate:g}/s (lost {step.lost}, closed {step.closed}, "
            f"failed publishes {step.publish_errors})"
        )
    if step.p99_ms > p99_limit:
        return f"p99 {step.p99_ms:.1f} ms > {p99_limit:.1f} ms at {step.rate:g}/s"
    # A saturated core explains a publisher that fell behind, so it is named first.
    if step.server_cpu_pct > 95:
        return f"server core saturated ({step.server_cpu_pct:.0f} %) at {step.rate:g}/s"
    if step.loadgen_cpu_pct > 90:
        return f"loadgen core saturated ({step.loadgen_cpu_pct:.0f} %) at {step.rate:g}/s"
    if step.entries / step.publish_seconds < 0.95 * step.rate:
        return f"publisher fell behind at {step.rate:g}/s"
    return ""


async def find_max_rate(contender: Contender, p99_limit: float, args: argparse.Namespace) -> None:
    """Raise the rate by --max-rate-step until a step is not sustained (at most 20 steps).

    A step that fails on p99 alone is measured once more before the search stops.
    """
    result = contender.result
    rate = args.rate
    retried = False
    for _ in range(20):
        step = await clean_window(contender, rate, args.step_duration, args)
        result.steps.append(step)
        print(f"  {result.variant.label} step: {step.describe()}", file=sys.stderr, flush=True)
        reason = max_rate_stop_reason(step, p99_limit, args)
        if reason.startswith("p99") and not retried:
            retried = True  # one slow burst on a shared machine: measure the step again
            continue
        if reason:
            result.max_rate_stop = reason
            return
        retried = False
        result.max_rate = step
        rate = round(rate * args.max_rate_step, 2)
    result.max_rate_stop = "step limit reached"


def failed(result: Result, error: BaseException) -> None:
    """Record a server's failure; one server failing must not hide the others' numbers."""
    result.error = str(error) or type(error).__name__
    print(
        f"  {result.variant.label} failed: {result.error}\n{log_tail(result.variant.slug)}",
        file=sys.stderr,
    )


async def run(args: argparse.Namespace) -> list[Result]:
    # SIGTERM (and SIGINT, which a background job ignores by default) cancel the run,
    # so every `finally` stops its child processes instead of leaving them behind.
    this_run = asyncio.current_task()
    assert this_run is not None
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, this_run.cancel)
    build_loadgen()
    chosen = variants(args)
    results = {variant: Result(variant) for variant in chosen}

    for variant in chosen if args.memory_conns else ():
        await wait_for_quiet(args)
        try:
            kib, conns = await measure_memory(variant, args)
        except (RuntimeError, TimeoutError, OSError) as error:
            failed(results[variant], error)
            continue
        results[variant].kib_per_conn, results[variant].memory_conns = kib, conns
        print(f"  {variant.label} memory: {kib:.2f} KiB/conn over {conns}", file=sys.stderr)

    async with contextlib.AsyncExitStack() as stack:
        contenders = []
        for variant in chosen:
            own = contextlib.AsyncExitStack()  # stops only this server's processes on failure
            try:
                contender = await start_contender(own, variant, args)
            except (RuntimeError, TimeoutError, OSError) as error:
                await own.aclose()
                failed(results[variant], error)
                continue
            await stack.enter_async_context(own)
            contender.result.kib_per_conn = (
                contender.result.kib_per_conn or results[variant].kib_per_conn
            )
            contender.result.memory_conns = (
                contender.result.memory_conns or results[variant].memory_conns
            )
            results[variant] = contender.result
            contenders.append(contender)

        for round_number in range(1, args.rounds + 1):
            for contender in list(contenders):
                label = contender.result.variant.label
                try:
                    window = await clean_window(contender, args.rate, args.duration, args)
                except (RuntimeError, TimeoutError, OSError) as error:
                    failed(contender.result, error)
                    contenders.remove(contender)
                    continue
                contender.result.rounds.append(window)
                print(
                    f"  {label} round {round_number}: {window.describe()}",
                    file=sys.stderr,
                    flush=True,
                )
        # One latency bar for every server: a server is not let off for a slow base.
        floor = next((r.window for r in results.values() if r.variant.server == "floor"), None)
        for contender in contenders if args.max_rate else ():
            base = floor or contender.result.window
            assert base is not None
            p99_limit = args.max_rate_p99_factor * base.p99_ms
            try:
                await find_max_rate(contender, p99_limit, args)
            except (RuntimeError, TimeoutError, OSError) as error:
                contender.result.max_rate_stop = f"failed: {error}"
    return list(results.values())


# ---------------------------------------------------------------- report


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(results: list[Result], args: argparse.Namespace) -> None:
    floor = next((r for r in results if r.variant.server == "floor" and r.window), None)
    floor_window = floor.window if floor else None
    print(
        f"\n{args.subscribers} subscribers, {args.rate:g} entries/s of ~{args.entry_size} B, "
        f"{args.rounds} interleaved windows of {args.duration:g} s per server; "
        f"memory over {args.memory_conns or args.subscribers} conns\n"
    )
    print(
        "| server | deliveries/s | CPU/delivery µs | per round | ratio to floor | p50 ms "
        f"| p99 ms | max ms | KiB/conn | connect {args.subscribers / 1000:g}k s | lost "
        "| loadgen CPU % | foreign CPU % |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        w = r.window
        if w is None:
            print(f"| {r.variant.label} | failed: {r.error} |")
            continue
        ratio = w.cpu_us / floor_window.cpu_us if floor_window else None
        cpus = [x.cpu_us for x in r.rounds]
        spread = f"{min(cpus):.1f}..{max(cpus):.1f}"
        print(
            f"| {r.variant.label} | {w.deliveries_per_s:,.0f} | {w.cpu_us:.2f} | {spread} | "
            f"{fmt(ratio, '.2f')}{'x' if ratio else ''} | "
            f"{w.p50_ms:.1f} | {w.p99_ms:.1f} | {w.max_ms:.1f} | "
            f"{fmt(r.kib_per_conn, '.2f')} | {fmt(r.connect_seconds, '.3f')} | {w.lost} | "
            f"{w.loadgen_cpu_pct:.0f} | {w.machine.foreign_pct:.0f} |"
        )
    if args.max_rate:
        print(
            "\nHighest sustained rate (a step is sustained with no loss, p99 within "
            f"{args.max_rate_p99_factor:g}x the floor's p99 at {args.rate:g}/s (the server's "
            "own without a floor), neither core saturated, the publisher on time):"
        )
        for r in results:
            m = r.max_rate
            if m is not None:
                print(
                    f"- {r.variant.label}: {m.rate:g} entries/s = {m.deliveries_per_s:,.0f} "
                    f"deliveries/s (server CPU {m.server_cpu_pct:.0f} %, p99 {m.p99_ms:.1f} ms, "
                    f"loadgen CPU {m.loadgen_cpu_pct:.0f} %); stopped: {r.max_rate_stop}"
                )
            elif r.window:
                print(f"- {r.variant.label}: not even {args.rate:g}/s; stopped: {r.max_rate_stop}")
    for compressed in (False, True):
        windows = [
            w
            for r in results
            if (r.deflate_accepted > 0) == compressed
            for w in (*r.rounds, *r.steps)
            if w.deliveries
        ]
        if not windows:
            continue
        busiest = max(windows, key=lambda w: w.loadgen_cpu_pct)
        kind = "compressed frames (inflating)" if compressed else "plain frames"
        print(
            f"\nHarness, {kind}: the loadgens used {busiest.loadgen_us:.2f} µs CPU per "
            f"delivery at {busiest.deliveries_per_s:,.0f} deliveries/s "
            f"({busiest.loadgen_cpu_pct:.0f} % of their core): about "
            f"{1e6 / busiest.loadgen_us:,.0f} deliveries/s before that core saturates."
        )
    print("\nTargets:")
    for line in target_lines(results, floor_window, args):
        print(f"- {line}")


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def target_lines(
    results: list[Result], floor: Window | None, args: argparse.Namespace
) -> Iterable[str]:
    single = next(
        (
            r.window
            for r in results
            if r.variant.server == "livepush" and r.variant.workers == 1 and not r.variant.deflate
        ),
        None,
    )
    for r in results:
        w, name = r.window, r.variant.label
        if r.variant.server != "livepush" or w is None:
            continue
        if floor:
            yield (
                f"{name}: CPU/delivery <= 1.15x floor: {verdict(w.cpu_us <= 1.15 * floor.cpu_us)} "
                f"({w.cpu_us:.2f} vs {floor.cpu_us:.2f} µs, {w.cpu_us / floor.cpu_us:.2f}x)"
            )
            yield (
                f"{name}: p99 <= 1.2x floor p99: {verdict(w.p99_ms <= 1.2 * floor.p99_ms)} "
                f"({w.p99_ms:.1f} vs {floor.p99_ms:.1f} ms, {w.p99_ms / floor.p99_ms:.2f}x)"
            )
        per_core = 1e6 / w.cpu_us
        yield (
            f"{name}: >= 150,000 deliveries/s per core: {verdict(per_core >= 150_000)} "
            f"({per_core:,.0f}/s by CPU per delivery)"
        )
        if r.kib_per_conn is not None:
            yield (
                f"{name}: idle memory <= 10 KiB/conn: {verdict(r.kib_per_conn <= 10)} "
                f"({r.kib_per_conn:.2f} KiB over {r.memory_conns} conns)"
            )
        if r.connect_seconds is not None:
            ok = r.connect_seconds < 1 and r.connect_failed == 0
            yield (
                f"{name}: {args.subscribers} connects+subscribes < 1 s: {verdict(ok)} "
                f"({r.connect_seconds:.3f} s, {r.connect_failed} failed)"
            )
        yield (
            f"{name}: zero loss: {verdict(w.lost == 0 and w.dups == 0 and w.gaps == 0)} "
            f"(lost {w.lost}, dups {w.dups}, gaps {w.gaps}, of {w.expected})"
        )
        if r.variant.deflate:
            yield (
                f"{name}: the server accepted permessage-deflate on {r.deflate_accepted} of "
                f"{args.subscribers} connections"
            )
        if r.variant.cluster:
            one = next(
                (
                    o.window
                    for o in results
                    if o.variant.feeds == r.variant.feeds and not o.variant.cluster
                ),
                None,
            )
            if one is not None:
                ratio = w.cpu_us / one.cpu_us
                yield (
                    f"{name}: CPU/delivery within 1.1x of one Redis: {verdict(ratio <= 1.10)} "
                    f"({w.cpu_us:.2f} vs {one.cpu_us:.2f} µs, {ratio:.2f}x; deliveries/s "
                    f"{w.deliveries_per_s:,.0f} vs {one.deliveries_per_s:,.0f})"
                )
        if r.variant.workers > 1 and single:
            ratio = w.cpu_us / single.cpu_us
            yield (
                f"{name}: summed CPU within 10% of one worker's: {verdict(ratio <= 1.10)} "
                f"({w.cpu_us:.2f} vs {single.cpu_us:.2f} µs/delivery, {ratio:.2f}x)"
            )


# ------------------------------------------------------------------- main


def variants(args: argparse.Namespace) -> list[Variant]:
    chosen = []
    for server in args.servers.split(","):
        if server == "cluster":
            feeds = args.feeds
            label = f"livepush {feeds} feeds, 2 workers"
            chosen.append(Variant(f"{label}, one Redis", "livepush", workers=2, feeds=feeds))
            chosen.append(
                Variant(f"{label}, 3-primary cluster", "livepush", 2, feeds=feeds, cluster=True)
            )
        elif server == "floor":
            chosen.append(Variant("floor", "floor"))
        elif server == "livepush":
            chosen.append(Variant("livepush", "livepush"))
            if args.compression:
                if "--ws-compression" not in livepush_flags():
                    chosen.append(Variant("livepush deflate-offered", "livepush", deflate=True))
                else:
                    # Clients offer deflate; the server declines it (off), or shares one
                    # compressed frame per event (shared, the default since it landed).
                    off = ("--ws-compression", "off")
                    label = "livepush deflate-offered, off"
                    chosen.append(Variant(label, "livepush", deflate=True, server_flags=off))
                    flags = ("--ws-compression", "shared")
                    label = "livepush deflate shared"
                    chosen.append(Variant(label, "livepush", deflate=True, server_flags=flags))
            if args.workers > 1:
                label = f"livepush {args.workers} workers"
                chosen.append(Variant(label, "livepush", workers=args.workers))
        else:
            raise SystemExit(f"unknown server {server!r}: floor, livepush or cluster")
    return chosen


def pin_to_load_core() -> None:
    """This process and its children (publisher, redis, loadgens) stay off the server's core."""
    if (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {LOAD_CORE})
    else:
        print("warning: one core: server and load share it, numbers mean little", file=sys.stderr)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = p.add_argument
    add(
        "--servers",
        default="floor,livepush",
        help="comma-separated: floor, livepush, cluster (the Redis Cluster scenario)",
    )
    add("--feeds", type=int, default=200, help="feeds of the cluster scenario")
    add("--subscribers", type=int, default=5000)
    add("--rate", type=float, default=10, help="entries per second")
    add("--entry-size", type=int, default=1024, help="bytes of event JSON, about")
    add("--duration", type=float, default=10, help="seconds of publishing per window")
    add("--rounds", type=int, default=3, help="interleaved windows per server")
    add("--workers", type=int, default=1, help="also run livepush with N workers")
    add("--compression", action="store_true", help="also run livepush, clients offering deflate")
    add("--memory-conns", type=int, default=10000, help="idle conns for KiB/conn; 0: subscribers")
    add("--subscribe", choices=["path", "message"], default="path", help="?feed= or a message")
    add("--publishers", type=int, default=4, help="concurrent ingest connections")
    add("--drain", type=float, default=10, help="seconds to wait for the last event")
    add("--max-rate", action="store_true", help="then raise the rate until it breaks")
    add("--max-rate-step", type=float, default=1.25, help="rate factor between steps")
    add("--max-rate-p99-factor", type=float, default=2.0)
    add("--step-duration", type=float, default=5, help="seconds per max-rate step")
    add("--deadline", type=float, default=3600, help="hard limit on the whole run, s")
    add("--quiet-wait", type=float, default=120, help="max s to wait for other work to stop")
    add("--max-foreign", type=float, default=5, help="%% of a core others may use in a window")
    add("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    if min(args.subscribers, args.rate, args.duration, args.rounds) <= 0:
        p.error("subscribers, rate, duration and rounds must be positive")
    if args.max_rate_step <= 1:
        p.error("--max-rate-step must be above 1")
    return args


def as_json(result: Result) -> dict[str, object]:
    data = asdict(result)
    window = result.window
    data["window"] = None if window is None else asdict(window)
    for name in ("window", "max_rate"):
        item = getattr(result, name)
        if item is not None:
            data[name].update(cpu_us=item.cpu_us, p50_ms=item.p50_ms, p99_ms=item.p99_ms)
    return data


def main() -> int:
    args = parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by the servers
    pin_to_load_core()
    print(f"load average before the run: {os.getloadavg()}", file=sys.stderr)
    try:
        results = uvloop.run(asyncio.wait_for(run(args), args.deadline))
    except asyncio.CancelledError:
        print("interrupted: every child process was stopped", file=sys.stderr)
        return 130
    print_table(results, args)
    if args.json:
        args.json.write_text(json.dumps([as_json(r) for r in results], indent=2, default=str))
    return 0 if all(r.window for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
