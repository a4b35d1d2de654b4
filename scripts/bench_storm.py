"""The reconnect storm: a killed node's readers come back to this one at once, each behind.

One livepush node (one worker, on the server core) on its own redis-server:

1. Calm: --storm-calm subscribers on feed `bench` get --rate entries/s; their p99
   over --storm-calm-seconds is the calm p99. They stay, and the entries keep coming
   through every later step (each step's window is at least 1 s).
2. Per round (--storm-rounds), a fresh feed `storm-N` gets --storm-head entries (H)
   that the node does not watch: its readers were on the node that died.
3. Plain connects, the yardstick: --storm-clients clients connect to feed `plain-N`
   with no `since`, over --storm-loadgens loadgen processes; the time until all are
   subscribed. Then they close, and the node goes idle. Like the storm's, these
   clients offer permessage-deflate unless --no-storm-deflate, as browsers and phones
   do (livepush compresses each event once for all of them).
4. The storm: as many clients connect at once with `?feed=storm-N&since=H-B&epoch=E`
   (B = --storm-behind). Each must get exactly seqs H-B+1..H (its first event is
   checked to be since+1: no loss, no duplicate); the time runs from the first
   connect() to the moment the last client holds seq H. The calm subscribers' p99
   over the storm is measured against their calm p99. The publisher's keep-alive
   connections are opened before each window (`LivepushPublisher.warm`): an entry
   whose POST had to connect first waited in the accept queue behind the storm's
   clients, which measured the publisher's connect, not the delivery.
5. Redis history reads during the storm: every run of livepush's history.lua that
   Redis sees (MONITOR, the script told by its SHA1; see benchkit.RedisMonitor), by
   feed and by the 64-position block its `since` falls in. A run with limit 0 reads
   only the feed's position (the first joiner's watch does one); the others read
   events, and the target is at most one per (feed, block). `INFO commandstats`
   (EVALSHA, XRANGE: history.lua runs XRANGE once, twice when it reads events) is
   printed beside it, before and after, as a cross-check; it cannot tell history.lua
   from publish.lua, which runs XRANGE too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass, field
from math import inf
from typing import Any, TypeVar

from bench_servers import (
    LIVEPUSH_VARIANT,
    ServerWindow,
    feed_position,
    histograms,
    server_process,
    wait_idle,
)
from benchkit import (
    LivepushPublisher,
    Loadgen,
    PublishResult,
    RedisMonitor,
    Resume,
    Target,
    body_for_size,
    connect_all,
    loadgens,
    merged_hist,
    percentile_ms,
    publish_paced,
    publishing_during,
    redis_calls,
    redis_server,
    reports_for,
    tree_cpu_exact,
    wait_for_quiet,
)

T = TypeVar("T")
READ_BLOCK = 64  # livepush/hub.py READ_BLOCK: joiners share a read per block of positions
CATCH_UP_BAR, CALM_BAR, READS_BAR = 1.5, 2.0, 1.0


@dataclass
class Calm:
    """What the calm subscribers saw while something else happened."""

    entries: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    lost: int
    dups: int
    gaps: int
    server: ServerWindow  # the server's own histograms meanwhile (/metrics)

    @staticmethod
    def of(published: PublishResult, reports: list[dict[str, Any]], server: ServerWindow) -> Calm:
        hist = merged_hist(reports)
        return Calm(
            len(published.seqs),
            percentile_ms(hist, 0.50),
            percentile_ms(hist, 0.99),
            max((r["latency_ms"]["max"] for r in reports), default=0.0),
            sum(r["lost"] for r in reports),
            sum(r["dups"] for r in reports),
            sum(r["gaps"] for r in reports),
            server,
        )

    def describe(self) -> str:
        return (
            f"{self.entries} entries, p50 {self.p50_ms:.1f} p99 {self.p99_ms:.1f} max "
            f"{self.max_ms:.1f} ms, lost {self.lost} dups {self.dups} gaps {self.gaps}; "
            f"{self.server.describe()}"
        )


@dataclass
class StormRound:
    head: int
    since: int
    clients: int
    plain_seconds: float
    plain_subscribed: int
    plain_failed: int
    plain_server_cpu: float
    plain_loadgen_cpu: float  # the plain clients' loadgens, on the load core
    calm_plain: Calm
    seconds: float  # first connect() to the last client holding the head
    caught_up: int
    subscribed: int
    failed: int
    closed: int
    unique: int
    expected: int
    lost: int
    dups: int
    gaps: int
    resets: int
    behind: int
    server_cpu: float
    loadgen_cpu: float
    calm: Calm
    reads: dict[int, int]  # the storm feed's history reads of events, by block start
    position_reads: int  # its history.lua runs with limit 0 (the watch's position)
    other_reads: int  # history.lua runs for other feeds meanwhile
    redis_commands: int  # commands Redis ran during the storm (MONITOR)
    redis: dict[str, int]  # INFO commandstats: calls during the storm

    @property
    def exact(self) -> bool:
        return (
            self.caught_up == self.clients
            and self.subscribed == self.clients
            and self.unique == self.expected == self.clients * (self.head - self.since)
            and not (self.failed or self.closed or self.lost or self.dups or self.gaps)
            and not (self.resets or self.behind)
        )

    @property
    def reads_per_block(self) -> int:
        return max(self.reads.values(), default=0)

    def describe_reads(self) -> str:
        blocks = ", ".join(f"block {b}: {n}" for b, n in sorted(self.reads.items())) or "none"
        return (
            f"history.lua reading events {blocks}; position only {self.position_reads}; "
            f"other feeds {self.other_reads}; of {self.redis_commands} commands (INFO "
            f"commandstats: EVALSHA {self.redis.get('evalsha', 0)}, XRANGE "
            f"{self.redis.get('xrange', 0)})"
        )

    def describe(self) -> str:
        return (
            f"storm: {self.caught_up}/{self.clients} caught up (seqs {self.since + 1}.."
            f"{self.head}) in {self.seconds:.3f} s vs {self.plain_subscribed} plain connects "
            f"in {self.plain_seconds:.3f} s ({self.seconds / self.plain_seconds:.2f}x); "
            f"unique {self.unique}/{self.expected} lost {self.lost} dups {self.dups} gaps "
            f"{self.gaps} resets {self.resets} failed {self.failed} closed {self.closed}; "
            f"server CPU {self.server_cpu:.2f} s (plain {self.plain_server_cpu:.2f} s); "
            f"loadgens' CPU {self.loadgen_cpu:.2f} s (plain {self.plain_loadgen_cpu:.2f} s); "
            f"Redis: {self.describe_reads()}; calm during: {self.calm.describe()}; calm "
            f"during plain: {self.calm_plain.describe()}"
        )


@dataclass
class StormResult:
    clients: int
    calm_subscribers: int
    deflate: bool
    calm: Calm | None = None
    rounds: list[StormRound] = field(default_factory=list)
    error: str = ""

    def targets(self) -> list[Target]:
        names = ("storm exact catch-up", "storm catch-up time", "storm calm p99")
        if not self.rounds or self.calm is None:
            why = self.error or "not run"
            return [Target(name, "not measured", "-", None, why) for name in (*names, "reads")]
        rounds = self.rounds
        exact = all(r.exact for r in rounds)
        ratios = [r.seconds / r.plain_seconds if r.plain_seconds > 0 else inf for r in rounds]
        ratio = statistics.median(ratios)
        calm = self.calm.p99_ms
        calm_ratio = statistics.median(r.calm.p99_ms / calm if calm else inf for r in rounds)
        reads = max(r.reads_per_block for r in rounds)
        each = ", ".join(f"{x:.2f}x" for x in ratios)
        last = rounds[-1]
        return [
            Target(
                names[0],
                f"{sum(r.caught_up for r in rounds):,} of {sum(r.clients for r in rounds):,} "
                "clients got every seq after their since exactly once",
                "all, no loss, no duplicate",
                exact,
                "; ".join(
                    f"round {i + 1}: lost {r.lost} dups {r.dups} gaps {r.gaps} resets "
                    f"{r.resets} failed {r.failed} closed {r.closed} behind {r.behind}"
                    for i, r in enumerate(rounds)
                ),
            ),
            Target(
                names[1],
                f"{ratio:.2f}x plain connects",
                f"<= {CATCH_UP_BAR:g}x",
                ratio <= CATCH_UP_BAR and exact,
                f"median of {len(rounds)} rounds ({each}); clients "
                + ("offering permessage-deflate" if self.deflate else "without deflate")
                + "; last round: the last of "
                f"{last.clients:,} clients {last.head - last.since} entries behind held the "
                f"head {last.seconds:.2f} s after the first connect, {last.clients:,} plain "
                f"connects took {last.plain_seconds:.2f} s; server CPU {last.server_cpu:.2f} "
                f"vs {last.plain_server_cpu:.2f} s, the loadgens' (load core) "
                f"{last.loadgen_cpu:.2f} vs {last.plain_loadgen_cpu:.2f} s",
            ),
            Target(
                names[2],
                f"{calm_ratio:.2f}x calm p99",
                f"<= {CALM_BAR:g}x",
                calm_ratio <= CALM_BAR,
                f"{self.calm_subscribers:,} subscribers at 10 entries/s: p99 "
                + ", ".join(f"{r.calm.p99_ms:.1f}" for r in rounds)
                + f" ms during the storms vs {self.calm.p99_ms:.1f} ms calm; the server's "
                + "longest turns (loop lag, max bucket) "
                + ", ".join(f"{r.calm.server.loop_lag.max_bound_ms:g}" for r in rounds)
                + f" ms during the storms vs {self.calm.server.loop_lag.max_bound_ms:g} ms "
                + "calm; an entry's ingest to its last write there (p99 bucket) "
                + ", ".join(f"{r.calm.server.accept_to_write.p99_bound_ms:g}" for r in rounds)
                + f" ms vs {self.calm.server.accept_to_write.p99_bound_ms:g} ms calm",
            ),
            Target(
                "storm history reads",
                f"{reads} per (feed, {READ_BLOCK}-position block)",
                f"<= {READS_BAR:g}",
                reads <= READS_BAR,
                "every client's since in one block; Redis during each storm: "
                + "; ".join(f"round {i + 1}: {r.describe_reads()}" for i, r in enumerate(rounds)),
            ),
        ]


async def server_during(
    port: int, window: Awaitable[tuple[T, PublishResult, list[dict[str, Any]]]]
) -> tuple[T, PublishResult, list[dict[str, Any]], ServerWindow]:
    """`window` (a publishing_during), with what the server's histograms say of it:
    /metrics read just before it starts and just after its reports are in."""
    before = await histograms(port)
    value, published, reports = await window
    server = ServerWindow.between(before, await histograms(port))
    return value, published, reports, server


async def storm_catch_up(
    group: list[Loadgen], first: int, last: int, within: float
) -> list[dict[str, Any]]:
    """Every storm loadgen connects at once; their reports once all hold `last`."""
    for lg in group:
        await lg.send("connect")
    return await reports_for(group, first, last, within)


def loadgens_cpu(group: list[Loadgen]) -> float:
    """On-CPU seconds of these loadgen processes so far."""
    return sum(tree_cpu_exact(lg.child.proc.pid) or 0.0 for lg in group)


async def storm_round(
    number: int,
    port: int,
    redis_port: int,
    server_pid: int,
    calm: list[Loadgen],
    publisher: LivepushPublisher,
    args: argparse.Namespace,
) -> StormRound:
    body = body_for_size(args.entry_size)
    feed = f"storm-{number}"
    history = LivepushPublisher(port, args.publishers, feed=feed)
    try:
        await publish_paced(history, 500, args.storm_head, body, args.publishers)
    finally:
        await history.aclose()
    epoch, head = await feed_position(port, feed)
    since = head - args.storm_behind

    async def during(what: Awaitable[T]) -> tuple[T, Calm]:
        window = publishing_during(
            calm,
            publisher,
            args.rate,
            body,
            args.publishers,
            what,
            at_least=1.0,
            at_most=args.storm_timeout + 30,
            drain=args.drain,
        )
        value, published, reports, server = await server_during(port, window)
        return value, Calm.of(published, reports, server)

    n, processes = args.storm_clients, args.storm_loadgens
    await wait_idle(server_pid)
    await wait_for_quiet(args.quiet_wait, args.max_foreign)
    async with loadgens(
        port,
        n,
        f"storm-plain-{number}",
        args.storm_deflate,
        "path",
        args.deadline,
        feed=f"plain-{number}",
        processes=processes,
    ) as plain:
        cpu_before, lg_before = tree_cpu_exact(server_pid) or 0.0, loadgens_cpu(plain)
        connected, calm_plain = await during(connect_all(plain, args.storm_timeout))
        plain_cpu = (tree_cpu_exact(server_pid) or 0.0) - cpu_before
        plain_lg_cpu = loadgens_cpu(plain) - lg_before
    await wait_idle(server_pid)
    await wait_for_quiet(args.quiet_wait, args.max_foreign)
    resume = Resume(since, epoch, head)
    async with loadgens(
        port,
        n,
        f"storm-{number}",
        args.storm_deflate,
        "path",
        args.deadline,
        feed=feed,
        resume=resume,
        processes=processes,
    ) as storm:
        before = await redis_calls(redis_port)
        async with RedisMonitor(redis_port) as monitor:
            cpu_before, lg_before = tree_cpu_exact(server_pid) or 0.0, loadgens_cpu(storm)
            caught, calm_storm = await during(
                storm_catch_up(storm, since + 1, head, args.storm_timeout)
            )
            storm_cpu = (tree_cpu_exact(server_pid) or 0.0) - cpu_before
            storm_lg_cpu = loadgens_cpu(storm) - lg_before
        after = await redis_calls(redis_port)
    mine = [read for read in monitor.reads if read.feed == feed]
    blocks = Counter(read.since - read.since % READ_BLOCK for read in mine if read.limit)
    starts = [r["connect_start"] for r in caught]
    ends = [r["last_caught_up_at"] for r in caught]
    done = sum(r["caught_up"] for r in caught)
    seconds = max(ends) - min(starts) if done else float("inf")

    def total(key: str) -> int:
        return int(sum(r[key] for r in caught))

    return StormRound(
        head=head,
        since=since,
        clients=n,
        plain_seconds=float(connected["seconds"]),
        plain_subscribed=int(connected["subscribed"]),
        plain_failed=int(connected["failed"]),
        plain_server_cpu=plain_cpu,
        plain_loadgen_cpu=plain_lg_cpu,
        calm_plain=calm_plain,
        seconds=seconds if done == n else max(seconds, args.storm_timeout),
        caught_up=done,
        subscribed=total("subscribed"),
        failed=total("failed"),
        closed=total("closed"),
        unique=total("unique"),
        expected=total("expected"),
        lost=total("lost"),
        dups=total("dups"),
        gaps=total("gaps"),
        resets=total("resets"),
        behind=total("behind"),
        server_cpu=storm_cpu,
        loadgen_cpu=storm_lg_cpu,
        calm=calm_storm,
        reads=dict(blocks),
        position_reads=sum(1 for read in mine if not read.limit),
        other_reads=len(monitor.reads) - len(mine),
        redis_commands=monitor.commands,
        redis={name: after[name] - before[name] for name in ("evalsha", "xrange")},
    )


async def run_storm(args: argparse.Namespace) -> StormResult:
    result = StormResult(args.storm_clients, args.storm_calm, args.storm_deflate)
    body = body_for_size(args.entry_size)
    try:
        async with contextlib.AsyncExitStack() as stack:
            redis_port = await stack.enter_async_context(redis_server("storm-redis"))
            server, port = await stack.enter_async_context(
                server_process(LIVEPUSH_VARIANT, f"redis://127.0.0.1:{redis_port}/0", "storm")
            )
            publisher = LivepushPublisher(port, args.publishers)
            stack.push_async_callback(publisher.aclose)
            calm = await stack.enter_async_context(
                loadgens(port, args.storm_calm, "storm-calm", False, "path", args.deadline)
            )
            await connect_all(calm, 120)
            calm_window = publishing_during(
                calm,
                publisher,
                args.rate,
                body,
                args.publishers,
                asyncio.sleep(1.0),
                at_least=1.0,
                at_most=2.0,
                drain=args.drain,
            )
            await calm_window  # warm-up: lazy imports, first allocations
            await wait_for_quiet(args.quiet_wait, args.max_foreign)
            _, published, reports, server_calm = await server_during(
                port,
                publishing_during(
                    calm,
                    publisher,
                    args.rate,
                    body,
                    args.publishers,
                    asyncio.sleep(args.storm_calm_seconds),
                    at_least=args.storm_calm_seconds,
                    at_most=args.storm_calm_seconds + 1,
                    drain=args.drain,
                ),
            )
            result.calm = Calm.of(published, reports, server_calm)
            say(f"storm calm: {result.calm.describe()}")
            for number in range(1, args.storm_rounds + 1):
                done = await storm_round(
                    number, port, redis_port, server.pid, calm, publisher, args
                )
                result.rounds.append(done)
                say(f"storm round {number}: {done.describe()}")
    except (RuntimeError, TimeoutError, OSError, ValueError) as error:
        result.error = f"failed: {error}"
        say(f"storm scenario {result.error}")
    return result


def say(text: str) -> None:
    print(f"  {text}", file=sys.stderr, flush=True)
