"""Benchmark: fan-out of one feed to thousands of WebSocket subscribers, livepush beside the floor.

--scenarios chooses what runs, in this order (default: fanout; `all`: every one, which
is what issue 11's targets need, all in one run):
- connect (scripts/bench_connect.py): handshakes + subscribes per second, floor and
  livepush, in the URL and by message, and KiB per idle connection;
- fanout (this file): the delivery windows below, --repeat times with fresh servers,
  and with --max-rate the highest rate each server sustains;
- storm (scripts/bench_storm.py): a reconnect storm of --storm-clients clients behind
  by --storm-behind entries, against the same node's plain connects;
- crowd (scripts/bench_crowd.py): --crowd subscribers (100,000) on livepush
  --crowd-workers 6, one entry per second.
At the end come the tables, then one `target ...` line per target of issue 11 with
its measured ratio and MET / NOT MET (NOT SHOWN: this run could not tell, and why).

For each server under test (the Python floor, scripts/floor_server.py, then livepush
and its variants) the fanout scenario measures:

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
- with --max-rate: the rate raised step by step from --max-rate-start until loss, a
  p99 over --max-rate-p99-factor times the floor's p99 at --rate, a saturated loadgen
  core, or a publisher that cannot keep the pace (with --max-rate-publishers
  connections). A saturated server core does not stop the search: a server that
  sends every waiting event in one write per socket (natural batching) keeps up while
  saturated, and loss and the p99 bar say whether it did. Issue 11's bursts target
  asks for the highest rate sustained with zero loss, the p99 reported beside it:
  its command in the README uses a bar of 10x (`--max-rate-p99-factor 10`), which
  only tells a server that keeps pace from one that falls behind. A finite step
  cannot do that by loss alone: the floor at 112 entries/s lost nothing within the
  drain while its median delivery was 1.3 s late. The default 2x bar is the earlier
  table's (README "Performance"), a latency bar as much as a rate;
- with --repeat N: all of the above N times, each with fresh servers; the steady p99
  target is the median of the N runs' ratios.

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
     [--scenarios all] [--repeat 3]
Issue 11, every target in one run (about 15 minutes; the max-rate search starts low
enough for both servers to have sustained steps, and its 10x p99 bar is the bursts
target's, see --max-rate above):
    .venv/bin/python scripts/bench.py --scenarios all --repeat 3 --max-rate \
        --max-rate-start 8 --max-rate-step 1.3 --max-rate-p99-factor 10 \
        --json test-artifacts/bench/issue11.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import signal
import statistics
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import uvloop
from bench_connect import ConnectResult, measure_memory, run_connect
from bench_crowd import CrowdResult, run_crowd
from bench_servers import LOAD_CORE, Variant, livepush_flags, server_process
from bench_storm import StormResult, run_storm
from benchkit import (
    OPEN_FILES_CAP,
    Child,
    FloorPublisher,
    LivepushPublisher,
    Loadgen,
    MachineSample,
    MachineUse,
    Publisher,
    Target,
    body_for_size,
    build_loadgen,
    connect_all,
    loadgens,
    log_tail,
    percentile_ms,
    publish_paced,
    redis_cluster,
    redis_server,
    tree_cpu_exact,
    tree_cpu_seconds,
    tree_rss,
    wait_for_quiet,
)

SCENARIOS = ("connect", "fanout", "storm", "crowd")
# livepush's p50 at 10 entries/s to 5,000 subscribers before issue 11, against the
# floor's in the same run: README "Performance", the rows "floor" and "livepush
# (compression off)" (5 rounds of 10 s). A ratio, so that another machine (faster or
# slower alike for both) does not decide the target.
README_P50_MS, README_FLOOR_P50_MS = 34.2, 31.9
README_P50_RATIO = README_P50_MS / README_FLOOR_P50_MS  # 1.07x
P50_TOLERANCE = 1.1  # "stays as it is": within 10 %, the spread between runs
STEADY_P99_BAR = 1.2
BURST_BAR = 1.5


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
    runs: list[Window] = field(default_factory=list)  # each --repeat's rounds as one
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


@dataclass
class Contender:
    """A server under test, up, with its subscribers connected and its publisher."""

    result: Result
    server: Child
    port: int
    redis_port: int
    group: list[Loadgen]
    publisher: Publisher


# ---------------------------------------------------------------- phases


async def start_contender(
    stack: contextlib.AsyncExitStack, result: Result, args: argparse.Namespace
) -> Contender:
    """Its own redis-server, the server, its subscribers connected (timed), a warm-up."""
    variant = result.variant
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
    await wait_for_quiet(args.quiet_wait, args.max_foreign)
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
    contender = Contender(result, server, port, redis_port, group, publisher)
    # Warm-up: the first events pay for lazy imports and first-time allocations.
    await measure_window(contender, args.rate, 1.0, args)
    return contender


async def measure_window(
    contender: Contender,
    rate: float,
    duration: float,
    args: argparse.Namespace,
    publisher: Publisher | None = None,
    concurrency: int = 0,
) -> Window:
    """Publish at `rate` for `duration` s (with `publisher`, default the contender's);
    server CPU and what the loadgens saw."""
    server, group = contender.server, contender.group
    count = max(1, round(rate * duration))
    feeds = contender.result.variant.feeds
    if feeds:  # the same count to every feed, so FIRST..LAST holds for each
        count = -(-count // feeds) * feeds
    for lg in group:
        await lg.send("reset")
    await (publisher or contender.publisher).warm()
    user_before, system_before = tree_cpu_seconds(server.pid)
    exact_before = tree_cpu_exact(server.pid)
    machine_before = MachineSample.take()
    started = time.monotonic()
    published = await publish_paced(
        publisher or contender.publisher,
        rate,
        count,
        body_for_size(args.entry_size),
        concurrency or args.publishers,
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
    contender: Contender,
    rate: float,
    duration: float,
    args: argparse.Namespace,
    publisher: Publisher | None = None,
    concurrency: int = 0,
) -> Window:
    """measure_window, again (at most 3 tries) while other work shared the machine."""
    for attempt in range(3):
        await wait_for_quiet(args.quiet_wait, args.max_foreign)
        window = await measure_window(contender, rate, duration, args, publisher, concurrency)
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
    # A saturated server core is no reason to stop: a server that batches keeps up
    # while saturated, and loss or the p99 bar show when it no longer does. A
    # saturated loadgen core means the harness is the limit: the search ends there.
    if step.loadgen_cpu_pct > 90:
        return f"loadgen core saturated ({step.loadgen_cpu_pct:.0f} %) at {step.rate:g}/s"
    if step.entries / step.publish_seconds < 0.95 * step.rate:
        return f"publisher fell behind at {step.rate:g}/s"
    return ""


async def find_max_rate(contender: Contender, p99_limit: float, args: argparse.Namespace) -> None:
    """Raise the rate by --max-rate-step from --max-rate-start until a step is not
    sustained (at most 20 steps).

    A step that fails on p99 alone is measured once more before the search stops.
    livepush's entries go over --max-rate-publishers connections: at 40 entries/s a
    POST that waits behind a 100 ms fan-out must not hold up the next ones.
    """
    result = contender.result
    rate = args.max_rate_start or args.rate
    publisher: Publisher = contender.publisher
    concurrency = args.publishers
    if isinstance(publisher, LivepushPublisher):
        concurrency = max(args.publishers, args.max_rate_publishers)
        publisher = LivepushPublisher(contender.port, concurrency, result.variant.feeds)
    try:
        await search_rates(contender, publisher, concurrency, rate, p99_limit, args)
    finally:
        if publisher is not contender.publisher:
            await publisher.aclose()


async def search_rates(
    contender: Contender,
    publisher: Publisher,
    concurrency: int,
    rate: float,
    p99_limit: float,
    args: argparse.Namespace,
) -> None:
    result = contender.result
    retried = False
    for _ in range(20):
        step = await clean_window(contender, rate, args.step_duration, args, publisher, concurrency)
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


async def run_fanout(args: argparse.Namespace, memory: bool) -> list[Result]:
    """The delivery windows, --repeat times with fresh servers; then --max-rate."""
    chosen = variants(args)
    results = {variant: Result(variant) for variant in chosen}

    for variant in chosen if memory and args.memory_conns else ():
        await wait_for_quiet(args.quiet_wait, args.max_foreign)
        try:
            measured = await measure_memory(variant, variant.deflate, args)
        except (RuntimeError, TimeoutError, OSError) as error:
            # Its windows may still run: the table shows "-" for its memory.
            print(f"  {variant.label} memory failed: {error}", file=sys.stderr)
            continue
        results[variant].kib_per_conn = measured.kib_per_conn
        results[variant].memory_conns = measured.conns
        print(
            f"  {variant.label} memory: {measured.kib_per_conn:.2f} KiB/conn over {measured.conns}",
            file=sys.stderr,
        )

    for repeat in range(1, args.repeat + 1):
        async with contextlib.AsyncExitStack() as stack:
            contenders = await start_contenders(stack, results, args)
            await run_rounds(contenders, repeat, args)
            if repeat < args.repeat or not args.max_rate:
                continue
            # One latency bar for every server: a server is not let off for a slow base.
            floor = next((r.window for r in results.values() if r.variant.server == "floor"), None)
            for contender in contenders:
                base = floor or contender.result.window
                if base is None:
                    continue
                p99_limit = args.max_rate_p99_factor * base.p99_ms
                try:
                    await find_max_rate(contender, p99_limit, args)
                except (RuntimeError, TimeoutError, OSError) as error:
                    contender.result.max_rate_stop = f"failed: {error}"
    return list(results.values())


async def start_contenders(
    stack: contextlib.AsyncExitStack, results: dict[Variant, Result], args: argparse.Namespace
) -> list[Contender]:
    """Every variant's server up with its subscribers; one that fails is left out."""
    contenders = []
    for result in results.values():
        if result.error:
            continue
        own = contextlib.AsyncExitStack()  # stops only this server's processes on failure
        try:
            contender = await start_contender(own, result, args)
        except (RuntimeError, TimeoutError, OSError) as error:
            await own.aclose()
            failed(result, error)
            continue
        await stack.enter_async_context(own)
        contenders.append(contender)
    return contenders


async def run_rounds(contenders: list[Contender], repeat: int, args: argparse.Namespace) -> None:
    """--rounds windows per server, interleaved; each server's as one run."""
    done: dict[int, list[Window]] = {id(c): [] for c in contenders}
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
            done[id(contender)].append(window)
            run = f"run {repeat}, " if args.repeat > 1 else ""
            print(
                f"  {label} {run}round {round_number}: {window.describe()}",
                file=sys.stderr,
                flush=True,
            )
    for contender in contenders:
        windows = done[id(contender)]
        if len(windows) == args.rounds:
            total = windows[0]
            for other in windows[1:]:
                total = total + other
            contender.result.runs.append(total)


@dataclass
class Report:
    """Everything one run measured."""

    fanout: list[Result] = field(default_factory=list)
    connect: ConnectResult | None = None
    storm: StormResult | None = None
    crowd: CrowdResult | None = None

    @property
    def failed(self) -> bool:
        scenarios = (self.connect, self.storm, self.crowd)
        return any(not r.window for r in self.fanout) or any(s and s.error for s in scenarios)


async def run(args: argparse.Namespace) -> Report:
    # SIGTERM (and SIGINT, which a background job ignores by default) cancel the run,
    # so every `finally` stops its child processes instead of leaving them behind.
    this_run = asyncio.current_task()
    assert this_run is not None
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, this_run.cancel)
    build_loadgen()
    report = Report()
    if "connect" in args.scenarios:
        print("connect scenario", file=sys.stderr, flush=True)
        report.connect = await run_connect(args)
    if "fanout" in args.scenarios:
        print("fanout scenario", file=sys.stderr, flush=True)
        # The connect scenario measured idle memory already, as the targets want it.
        report.fanout = await run_fanout(args, memory="connect" not in args.scenarios)
    if "storm" in args.scenarios:
        print("storm scenario", file=sys.stderr, flush=True)
        report.storm = await run_storm(args)
    if "crowd" in args.scenarios:
        print("crowd scenario", file=sys.stderr, flush=True)
        report.crowd = await run_crowd(args)
    return report


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
    if args.repeat > 1:
        print(f"\np99 ms of each of the {args.repeat} runs (fresh servers each):")
        for r in results:
            print(f"- {r.variant.label}: " + ", ".join(f"{w.p99_ms:.1f}" for w in r.runs))
    if args.max_rate:
        print(
            "\nHighest sustained rate (a step is sustained with no loss, p99 within "
            f"{args.max_rate_p99_factor:g}x the floor's p99 at {args.rate:g}/s (the server's "
            "own without a floor), the loadgen core not saturated, the publisher on time; "
            "a saturated server core does not end the search):"
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
                start = args.max_rate_start or args.rate
                print(f"- {r.variant.label}: not even {start:g}/s; stopped: {r.max_rate_stop}")
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


def print_report(report: Report, args: argparse.Namespace) -> None:
    if report.fanout:
        print_table(report.fanout, args)
    if report.connect is not None:
        connect = report.connect
        offered = ", clients offering permessage-deflate" if connect.deflate else ""
        print(f"\nConnect: {connect.conns:,} clients at once per burst{offered}")
        print("| server | by | handshakes + subscribes/s per burst | median | server µs/conn |")
        print("|---|---|---|---:|---:|")
        for server in ("floor", "livepush"):
            for mode in ("path", "message"):
                bursts = connect.of(server, mode)
                if not bursts:
                    continue
                rates = ", ".join(f"{b.per_second:,.0f}" for b in bursts)
                cpu = statistics.median(
                    b.server_cpu_seconds / max(b.subscribed, 1) * 1e6 for b in bursts
                )
                median = connect.rate(server, mode) or 0.0
                print(f"| {server} | {mode} | {rates} | {median:,.0f} | {cpu:.0f} |")
        for server, memory in connect.memory.items():
            print(f"- {server}: {memory.kib_per_conn:.2f} KiB per idle connection")
    if report.storm is not None:
        storm = report.storm
        print(f"\nReconnect storm: {storm.clients:,} clients per round")
        if storm.calm is not None:
            print(f"- calm, {storm.calm_subscribers:,} subscribers: {storm.calm.describe()}")
        for i, done in enumerate(storm.rounds, 1):
            print(f"- round {i}: {done.describe()}")
    if report.crowd is not None:
        print(f"\nCrowd: {report.crowd.describe()}")
    print("\nIssue 11 targets, all from this run:")
    for target in issue_targets(report, args):
        print(target.line())


def issue_targets(report: Report, args: argparse.Namespace) -> list[Target]:
    """Every target of issue 11, in the issue's order; NOT SHOWN where not measured."""

    def skipped(names: Iterable[str], scenario: str) -> list[Target]:
        return [Target(n, "not run", "-", None, f"--scenarios {scenario}") for n in names]

    found = []
    if report.connect is not None:
        found += report.connect.targets()
    else:
        names = ("connect, subscribing in the URL", "connect, subscribing by message")
        found += skipped((*names, "idle memory"), "connect")
    if report.storm is not None:
        found += report.storm.targets()
    else:
        found += skipped(("reconnect storm",), "storm")
    if report.fanout:
        found += fanout_targets(report.fanout, args)
    else:
        found += skipped(("bursts", "p50 at 10 entries/s", "steady p99"), "fanout")
    if report.crowd is not None:
        found += report.crowd.targets()
    else:
        found += skipped(("100,000 subscribers",), "crowd")
    return found


def fanout_targets(results: list[Result], args: argparse.Namespace) -> list[Target]:
    floor = next((r for r in results if r.variant.server == "floor" and r.window), None)
    livepush = next((r for r in results if r.variant.label == "livepush" and r.window), None)
    names = ("bursts", "p50 at 10 entries/s", "steady p99")
    if floor is None or livepush is None:
        why = "the floor and livepush (--servers floor,livepush) must both have run"
        return [Target(name, "not measured", "-", None, why) for name in names]
    found = [burst_target(floor, livepush, args)]
    w, f = livepush.window, floor.window
    assert w is not None
    assert f is not None
    setting = f"{args.subscribers:,} subscribers x {args.rate:g} entries/s"
    same = args.rate == 10 and args.subscribers == 5000 and args.entry_size == 1024
    ratio = w.p50_ms / f.p50_ms
    found.append(
        Target(
            names[1],
            f"{ratio:.2f}x the floor's p50 vs the README's {README_P50_RATIO:.2f}x",
            f"<= {P50_TOLERANCE:g}x the README's ratio",
            ratio <= P50_TOLERANCE * README_P50_RATIO if same else None,
            f"{setting}, all {len(livepush.rounds)} windows: livepush {w.p50_ms:.1f} ms, "
            f"the floor {f.p50_ms:.1f} ms (the README's: {README_P50_MS:g} and "
            f"{README_FLOOR_P50_MS:g} ms)"
            + ("" if same else "; the README's figures are for 5,000 x 10/s of 1 KiB"),
        )
    )
    pairs = list(zip(floor.runs, livepush.runs, strict=False))
    if not pairs:
        found.append(Target(names[2], "not measured", "-", None, "no complete run"))
        return found
    ratios = [lp.p99_ms / fl.p99_ms for fl, lp in pairs]
    median = statistics.median(ratios)
    found.append(
        Target(
            names[2],
            f"{median:.2f}x floor, the median of {len(ratios)} runs",
            f"<= {STEADY_P99_BAR:g}x",
            median <= STEADY_P99_BAR,
            f"{setting}; runs: "
            + ", ".join(
                f"{ratio:.2f}x ({lp.p99_ms:.1f} vs {fl.p99_ms:.1f} ms)"
                for ratio, (fl, lp) in zip(ratios, pairs, strict=True)
            ),
        )
    )
    return found


HARNESS_LIMITS = ("loadgen core saturated", "other processes")


def burst_target(floor: Result, livepush: Result, args: argparse.Namespace) -> Target:
    name = "bursts"
    if not args.max_rate:
        return Target(name, "not run", f">= {BURST_BAR:g}x floor", None, "run with --max-rate")
    f, lp = floor.max_rate, livepush.max_rate
    start = args.max_rate_start or args.rate
    if f is None or lp is None:
        who = "the floor" if f is None else "livepush"
        return Target(
            name,
            f"{who} did not sustain {start:g}/s",
            f">= {BURST_BAR:g}x floor",
            None if f is None else False,
            f"floor stopped: {floor.max_rate_stop}; livepush stopped: {livepush.max_rate_stop}",
        )
    ratio = lp.rate / f.rate
    assert floor.window is not None  # it has a max rate, so it had its windows
    bar = args.max_rate_p99_factor * floor.window.p99_ms
    met: bool | None = ratio >= BURST_BAR
    if not met and livepush.max_rate_stop.startswith(HARNESS_LIMITS):
        met = None  # the harness ran out first: this machine cannot tell
    return Target(
        name,
        f"{ratio:.2f}x the floor's highest zero-loss rate",
        f">= {BURST_BAR:g}x",
        met,
        f"livepush {lp.rate:g} entries/s = {lp.deliveries_per_s:,.0f} deliveries/s, p99 "
        f"{lp.p99_ms:.1f} ms, server CPU {lp.server_cpu_pct:.0f} %; floor {f.rate:g}/s = "
        f"{f.deliveries_per_s:,.0f} deliveries/s, p99 {f.p99_ms:.1f} ms, server CPU "
        f"{f.server_cpu_pct:.0f} %; livepush stopped: {livepush.max_rate_stop}; floor "
        f"stopped: {floor.max_rate_stop}; a step is sustained with no loss, the publisher "
        f"on time, the loadgen core not saturated and p99 within {args.max_rate_p99_factor:g}x "
        f"the floor's p99 at {args.rate:g}/s ({bar:.0f} ms)",
    )


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
    add(
        "--scenarios",
        default="fanout",
        help="comma-separated: connect, fanout, storm, crowd; or all (issue 11's targets)",
    )
    add("--repeat", type=int, default=1, help="fanout runs, each with fresh servers")
    add("--max-rate-start", type=float, help="first max-rate step (default --rate)")
    add("--max-rate-publishers", type=int, default=16, help="ingest connections of max-rate")
    connect = p.add_argument_group("connect scenario")
    connect.add_argument("--connect-conns", type=int, default=10000, help="clients per burst")
    connect.add_argument("--connect-rounds", type=int, default=3, help="bursts per server, mode")
    connect.add_argument(
        "--connect-deflate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="clients offer permessage-deflate, as browsers do",
    )
    storm = p.add_argument_group("storm scenario")
    storm.add_argument("--storm-clients", type=int, default=10000)
    storm.add_argument("--storm-head", type=int, default=100, help="entries in the storm feed")
    storm.add_argument("--storm-behind", type=int, default=50, help="since = head - this")
    storm.add_argument("--storm-calm", type=int, default=1000, help="subscribers already there")
    storm.add_argument("--storm-calm-seconds", type=float, default=5)
    storm.add_argument("--storm-rounds", type=int, default=3, help="storms, each on a new feed")
    storm.add_argument("--storm-loadgens", type=int, default=2, help="loadgen processes")
    storm.add_argument("--storm-timeout", type=float, default=60, help="s for every catch-up")
    storm.add_argument(
        "--storm-deflate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the storm's clients (and the plain connects') offer permessage-deflate",
    )
    crowd = p.add_argument_group("crowd scenario")
    crowd.add_argument("--crowd", type=int, default=100_000, help="subscribers")
    crowd.add_argument("--crowd-workers", type=int, default=6, help="livepush worker processes")
    crowd.add_argument("--crowd-loadgens", type=int, default=6, help="loadgen processes")
    crowd.add_argument("--crowd-rate", type=float, default=1, help="entries per second")
    crowd.add_argument("--crowd-duration", type=float, default=30, help="seconds publishing")
    crowd.add_argument("--crowd-timeout", type=float, default=300, help="s for the connects")
    args = p.parse_args(argv)
    chosen = [name.strip() for name in args.scenarios.split(",") if name.strip()]
    args.scenarios = list(SCENARIOS) if chosen == ["all"] else chosen
    if not args.scenarios or set(args.scenarios) - set(SCENARIOS):
        p.error(f"--scenarios: a comma-separated list of {', '.join(SCENARIOS)}, or all")
    if min(args.repeat, args.connect_conns, args.connect_rounds, args.storm_clients) <= 0:
        p.error("--repeat, --connect-conns, --connect-rounds, --storm-clients must be positive")
    if not 0 < args.storm_behind <= args.storm_head:
        p.error("--storm-behind must be in 1..--storm-head")
    for total, processes, what in (
        (args.storm_clients, args.storm_loadgens, "--storm-clients/--storm-loadgens"),
        (args.crowd, args.crowd_loadgens, "--crowd/--crowd-loadgens"),
    ):
        if processes <= 0 or total / processes > OPEN_FILES_CAP - 1000:
            p.error(f"{what}: over {OPEN_FILES_CAP - 1000} connections per loadgen process")
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
        report = uvloop.run(asyncio.wait_for(run(args), args.deadline))
    except asyncio.CancelledError:
        print("interrupted: every child process was stopped", file=sys.stderr)
        return 130
    print_report(report, args)
    if args.json:
        data = {
            "args": vars(args),
            "fanout": [as_json(r) for r in report.fanout],
            "connect": None if report.connect is None else asdict(report.connect),
            "storm": None if report.storm is None else asdict(report.storm),
            "crowd": None if report.crowd is None else asdict(report.crowd),
            "targets": [asdict(t) | {"line": t.line()} for t in issue_targets(report, args)],
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data, indent=2, default=str))
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
