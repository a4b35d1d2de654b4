"""Chaos soak: livepush nodes, Redis and readers fail at random; nothing may be lost.

    .venv/bin/python scripts/chaos.py                       # 110 s, 3 nodes, 300 readers
    .venv/bin/python scripts/chaos.py --duration 600 --clients 600 --seed 7
    .venv/bin/python scripts/chaos.py --cluster             # on a 3-primary Redis Cluster

What runs, all on 127.0.0.1 and free ports, in a temp directory removed at the end:
- one redis-server with an append-only file fsync'd on every write (or, with
  --cluster, three cluster primaries each with one), and --nodes `livepush serve`
  processes on it;
- --clients readers in this process, a --sse-share of them on SSE, the rest on
  WebSocket, each following one feed as livepush.js does (chaoskit.Follower): from
  now or from a snapshot, then from its last seq and epoch on a random node after any
  end, with full-jitter backoff; a reset reloads the snapshot; a hole resubscribes;
- --publishers publishing --rate entries/s in all, each entry retried with the same
  Idempotency-Key on any node until a 2xx;
- faults from a schedule drawn from --seed that holds every kind at least once
  (before any second of a kind), then more at random: a node SIGKILLed or SIGTERMed
  (and started again seconds later), a node restarted, Redis `kill -9`ed and started
  again, Redis SIGSTOPped for a few seconds (these one at a time), and on a track of
  their own, landing during the others, `CLIENT KILL TYPE pubsub` and readers'
  sockets aborted.

With --no-persistence Redis keeps no data: each kill loses history, and every reader
must be told with a reset to a new epoch.

Then it quiesces: no new fault (the current one is undone), every process up, the
publishers finish what they started, and every reader gets a bounded time to reach
its feed's head. Every reader's record is checked against the accepted entries
(scripts/chaos_record.py: verdict) and one line says PASS or FAIL with the counts;
the exit status is 0 only on PASS. The whole run is bounded by --duration. Every
second, each reader's open connection is looked at: one that holds nothing unread and
still lacks an entry another reader got SILENT_AFTER (30 s) before is a FAIL too (the
node left it silent). A reader that lacks one while bytes wait unread is behind on its
own (this process did not keep up); that is told (`reader_lag`), and its resets behind
history are then the soak's doing, not livepush's.

Cost and limits: the readers share this process and its core, so hundreds of them
at tens of entries per second are what one Python process keeps up with; their
backoff is capped at 5 s (livepush.js: 30 s) so that the quiesce stays short. The
schedule is reproducible; when each fault lands relative to the traffic is not.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import random
import resource
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import uvloop
from chaos_record import Accepted, FeedEnd, Ledger, Record, Verdict, verdict
from chaos_traffic import SILENT_AFTER, Follower, Publisher
from chaoskit import (
    DRAIN_SECONDS,
    HTTP_ERRORS,
    Node,
    Proc,
    Redis1,
    RedisCluster,
    cluster_unavailable,
    until,
)
from redis.exceptions import RedisError

KINDS = ("kill", "term", "restart", "redis-kill", "pubsub-kill", "stop", "client-cut")
# Faults that take a process down run one at a time; the instant ones (a cut, a kill of
# connections) run on their own track, so they also land during the others.
INSTANT = ("pubsub-kill", "client-cut")
WEIGHTS = {"kill": 3, "term": 2, "restart": 2, "redis-kill": 2, "stop": 2}
HOLDS = {  # seconds down or stopped; client-cut: the share of readers cut
    "kill": (0.5, 3.0),
    "term": (1.0, 4.0),
    "restart": (0.0, 0.0),
    "redis-kill": (0.2, 2.0),
    "pubsub-kill": (0.0, 0.0),
    "stop": (1.0, 4.0),
    "client-cut": (0.05, 0.2),
}
MAX_DURATION = 3600.0
BACKOFF_CAP = 5.0  # seconds: the readers' backoff cap (livepush.js: 30 s)
SETUP_WITHIN = 30.0  # seconds for Redis, the nodes and the first subscriptions
READY_WITHIN = 30.0  # seconds for a restarted node or Redis to be ready again


@dataclass(frozen=True, slots=True)
class Fault:
    """One planned fault: when (seconds into the chaos phase), what, on which, how long."""

    at: float
    kind: str
    target: int  # a node or Redis server index, taken modulo their number
    hold: float  # seconds down or stopped; client-cut: the share of readers cut
    first: bool  # the first of its kind: run even if the machine is slow


def plan(seed: int, window: float, count: int) -> tuple[list[Fault], list[Fault]]:
    """The fault schedule, as two tracks: process faults (one at a time) and instant
    ones. Each track holds each of its kinds once, in a random order, over the first
    half of the window, then more at random over the rest (`count` in all, at least
    one of each kind). Within a track faults run one after another: a slow one delays
    what follows, and what the window cannot hold is skipped from the end."""
    rng = random.Random(seed)
    tracks: list[list[Fault]] = []
    for kinds, share in ((list(WEIGHTS), 0.6), (list(INSTANT), 0.4)):
        rng.shuffle(kinds)
        weights = [WEIGHTS.get(kind, 1) for kind in kinds]
        extra = rng.choices(kinds, weights=weights, k=max(0, round(count * share) - len(kinds)))
        times = [window * 0.5 * i / len(kinds) for i in range(len(kinds))]
        times += sorted(rng.uniform(window * 0.5, window * 0.95) for _ in extra)
        tracks.append(
            [
                Fault(
                    round(at, 2),
                    kind,
                    rng.randrange(1000),
                    round(rng.uniform(*HOLDS[kind]), 2),
                    first=number < len(kinds),
                )
                for number, (at, kind) in enumerate(zip(times, kinds + extra, strict=True))
            ]
        )
    return tracks[0], tracks[1]


@dataclass
class FaultDone:
    kind: str
    target: str
    at: float  # seconds since the run began
    took: float
    detail: str = ""


class Soak:
    """One run: its processes, readers, publishers and faults, always stopped at the end."""

    def __init__(self, args: argparse.Namespace, root: Path) -> None:
        self.args, self.root = args, root
        self.t0 = time.monotonic()
        self.deadline: float = self.t0 + args.duration
        self.rng = random.Random(args.seed)
        persistent = not args.no_persistence
        self.redis: Redis1 = (RedisCluster if args.cluster else Redis1)(root, persistent)
        self.nodes: list[Node] = []
        self.feeds: list[str] = []
        self.ledger = Ledger(self.clock)  # the followers' clock: see SILENT_AFTER
        self.records: list[Record] = []
        self.followers: list[Follower] = []
        self.publishers: list[Publisher] = []
        self.accepted: list[Accepted] = []
        self.failures: list[str] = []  # what went wrong outside the readers' records
        self.faults: list[FaultDone] = []
        self.behind: list[str] = []  # readers short of the head at the end, and where they stood
        self.first_epochs: dict[str, str] = {}
        self.stop_followers = asyncio.Event()
        self.creating = asyncio.Event()
        self.http = httpx.AsyncClient(timeout=5.0)
        self.tasks: list[asyncio.Task[None]] = []

    def clock(self) -> float:
        return time.monotonic() - self.t0

    def say(self, text: str) -> None:
        print(f"chaos: {self.clock():6.1f} s {text}", file=sys.stderr, flush=True)

    # ------------------------------------------------------------ the phases

    async def setup(self) -> None:
        args = self.args
        persistence = "no persistence" if args.no_persistence else "AOF (appendfsync always)"
        self.say(f"starting {self.redis.kind} with {persistence}")
        await self.redis.start(SETUP_WITHIN)
        self.feeds = await self.redis.feeds(len(self.redis.servers) if args.cluster else 1)
        self.nodes = [
            Node(self.root, i, self.redis.url, args.history_size) for i in range(args.nodes)
        ]
        for node in self.nodes:
            node.start()
        for node in self.nodes:
            if not await node.ready(self.http, SETUP_WITHIN):
                raise RuntimeError(f"{node.name} did not become ready:\n{node.tail()}")
        for feed in self.feeds:
            info = await self.http.get(f"{self.nodes[0].url}/v1/feeds/{feed}")
            self.first_epochs[feed] = orjson.loads(info.content)["epoch"]
        self.say(f"{len(self.nodes)} nodes ready; feeds {', '.join(self.feeds)}")
        sse = round(args.clients * args.sse_share)
        for i in range(args.clients):
            transport = "sse" if i < sse else "ws"
            feed = self.feeds[i % len(self.feeds)]
            record = Record(f"{transport}-{i}", feed, transport, self.ledger, args.history_size)
            follower = Follower(
                record,
                self.nodes,
                random.Random(self.rng.random()),
                self.clock,
                BACKOFF_CAP,
                from_snapshot=i % 2 == 1,  # as the reader page starts; the rest from now
            )
            self.records.append(record)
            self.followers.append(follower)
        for follower in self.followers:
            self.tasks.append(asyncio.create_task(follower.run(self.stop_followers)))
            await asyncio.sleep(2.0 / max(1, args.clients))  # all of them within 2 s
        await until(lambda: all(r.segments for r in self.records), SETUP_WITHIN)
        subscribed = sum(1 for r in self.records if r.segments)
        self.say(f"{subscribed} of {len(self.records)} readers subscribed")

    async def chaos(self, until: float, planned: float) -> None:
        """Publishers and faults until the monotonic time `until`; the faults' schedule
        is drawn for `planned` seconds (from the options alone, so that a seed gives
        the same schedule however long the setup took; what runs past `until` is not
        run)."""
        args = self.args
        self.creating.set()
        interval = args.publishers / args.rate
        # An entry in hand when the chaos ends is retried into the quiesce, up to here.
        give_up = until + 0.5 * (self.deadline - until)
        publishing = []
        for i in range(args.publishers):
            publisher = Publisher(
                i,
                f"r{args.seed}",
                self.feeds,
                self.nodes,
                random.Random(self.rng.random()),
                self.accepted,
                self.failures,
            )
            self.publishers.append(publisher)
            publishing.append(asyncio.create_task(publisher.run(interval, self.creating, give_up)))
        self.tasks += publishing
        self.tasks.append(asyncio.create_task(self.watch_silences()))
        window = until - time.monotonic()
        self.say(f"chaos for {window:.0f} s")
        if window < 10 and not args.no_faults:
            self.failures.append(f"the setup left {window:.0f} s for faults: raise --duration")
        elif not args.no_faults:
            tracks = plan(args.seed, planned, count=int(planned / 2.5))
            progress = asyncio.create_task(self.progress(until))
            try:
                await asyncio.gather(*(self.run_track(track, until) for track in tracks))
            finally:
                progress.cancel()
        await asyncio.sleep(max(0.0, until - time.monotonic()))
        self.creating.clear()
        # Publishers finish the entry in hand (retried until a 2xx), within the run.
        done, pending = await asyncio.wait(publishing, timeout=max(1.0, give_up - time.monotonic()))
        for task in pending:
            task.cancel()
        for task in done:
            if task.exception() is not None:
                self.failures.append(f"a publisher failed: {task.exception()!r}")
        if pending:
            self.failures.append(f"{len(pending)} publishers still retrying at the end")

    async def run_track(self, track: list[Fault], until: float) -> None:
        started = time.monotonic()
        for fault in track:
            await asyncio.sleep(max(0.0, started + fault.at - time.monotonic()))
            # Every kind runs once even on a slow machine (into the quiesce's first
            # part if it must); later faults only within the window.
            end = self.deadline - 10 if fault.first else until
            if time.monotonic() + fault.hold > end:
                break
            await self.strike(fault)

    def silences(self) -> list[str]:
        """Every silent connection the followers noted (Follower.check_silence)."""
        return [line for follower in self.followers for line in follower.silences]

    async def watch_silences(self) -> None:
        """Every second, each follower's open connection against the others' progress
        (Follower.check_silence); to the end of the run, the quiesce included."""
        while True:
            await asyncio.sleep(1)
            for follower in self.followers:
                follower.check_silence()

    async def progress(self, until: float) -> None:
        while time.monotonic() < until:
            await asyncio.sleep(10)
            live = sum(1 for f in self.followers if f.abort is not None)
            kinds = Counter(f.kind for f in self.faults)
            self.say(
                f"published {len(self.accepted)}, faults {dict(kinds)}, {live} readers connected"
            )

    async def strike(self, fault: Fault) -> None:
        """Run one fault to its end: whatever it stopped is running again after it."""
        started = time.monotonic()
        at = self.clock()
        kind = fault.kind
        target: Proc
        detail = ""
        if kind in ("kill", "term", "restart"):
            running = [node for node in self.nodes if node.running]
            if len(running) < 2 and len(self.nodes) > 1:
                return  # keep one node serving
            target = running[fault.target % len(running)]
            if kind == "kill":
                target.signal(signal.SIGKILL)
                await target.exited(10)
            else:
                target.signal(signal.SIGTERM)
                if not await target.exited(DRAIN_SECONDS + 7):
                    self.failures.append(
                        f"{target.name} still running {DRAIN_SECONDS + 7} s after SIGTERM "
                        f"(--drain-seconds {DRAIN_SECONDS})"
                    )
                    target.kill()
                code = target.popen.returncode if target.popen else None
                detail = f"exit {code}"
            await asyncio.sleep(fault.hold)
            await self.start_node(target)
        elif kind == "redis-kill":
            target = self.redis.servers[fault.target % len(self.redis.servers)]
            target.kill()
            await asyncio.sleep(fault.hold)
            target.start()
            await self.redis_healthy()
        elif kind == "stop":
            target = self.redis.servers[fault.target % len(self.redis.servers)]
            target.signal(signal.SIGSTOP)
            try:
                await asyncio.sleep(fault.hold)
            finally:
                target.signal(signal.SIGCONT)
        elif kind == "pubsub-kill":
            killed, missed = 0, 0
            for server in self.redis.servers:
                # A stopped or restarting Redis is waited for (10 s at most).
                for _ in range(20):
                    try:
                        killed += int(await server.call("CLIENT", "KILL", "TYPE", "pubsub"))
                        break
                    except (RedisError, OSError):
                        await asyncio.sleep(0.5)
                else:
                    missed += 1
            detail = f"{killed} pub/sub connections" + (
                f", {missed} servers silent" if missed else ""
            )
            target = self.redis.servers[0]
        else:
            count = max(1, round(len(self.followers) * fault.hold))
            cut = sum(f.cut() for f in random.Random(fault.target).sample(self.followers, count))
            detail = f"{cut} sockets aborted"
            target = self.redis.servers[0]
        name = target.name if kind not in ("pubsub-kill", "client-cut") else "-"
        took = round(time.monotonic() - started, 2)
        self.faults.append(FaultDone(kind, name, round(at, 2), took, detail))

    def ready_within(self) -> float:
        """READY_WITHIN, or less near the deadline: the run's end stays bounded."""
        return max(1.0, min(READY_WITHIN, self.deadline + 5 - time.monotonic()))

    async def start_node(self, node: Node) -> None:
        node.start()
        if not await node.ready(self.http, self.ready_within()):
            self.failures.append(f"{node.name} not ready {READY_WITHIN} s after a start")

    async def redis_healthy(self) -> None:
        if not await self.redis.healthy(self.ready_within()):
            self.failures.append(f"Redis not healthy {READY_WITHIN} s after a restart")

    async def quiesce(self) -> dict[str, FeedEnd]:
        """Everything up; then every reader gets until the deadline to reach the head."""
        for server in self.redis.servers:
            server.signal(signal.SIGCONT)
            if not server.running:
                server.start()
        await self.redis_healthy()
        for node in self.nodes:
            if not node.running:
                await self.start_node(node)
        ends: dict[str, FeedEnd] = {}
        for feed in self.feeds:
            info = await self.read_feed(feed)
            if info is not None:
                ends[feed] = FeedEnd(feed, self.first_epochs[feed], info["epoch"], info["head_seq"])
        self.say("quiescing: every reader to its feed's head")

        def caught_up() -> bool:
            return all(
                r.feed in ends
                and r.cursor.epoch == ends[r.feed].epoch
                and r.cursor.seq == ends[r.feed].head_seq
                for r in self.records
            )

        await until(caught_up, self.deadline - time.monotonic())
        for follower in self.followers:
            record = follower.record
            end = ends.get(record.feed)
            if end is None:
                continue  # its feed's head is unknown: a failure already
            if (record.cursor.epoch, record.cursor.seq) != (end.epoch, end.head_seq):
                self.behind.append(f"{record.name} behind at the end: {follower.where()}")
        for task in self.tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                self.failures.append(f"a task of the soak died: {task.exception()!r}")
        self.stop_followers.set()
        return ends

    async def read_feed(self, feed: str) -> dict[str, Any] | None:
        """The feed's epoch and head, from any node that answers; None (and a failure
        naming what each node last answered) when none did before the deadline."""
        last: dict[str, str] = {}
        for _ in range(100):
            if time.monotonic() > self.deadline:
                break
            node = self.rng.choice(self.nodes)
            try:
                answer = await self.http.get(f"{node.url}/v1/feeds/{feed}")
            except HTTP_ERRORS as error:
                last[node.name] = repr(error)
            else:
                if answer.status_code == 200:
                    info: dict[str, Any] = orjson.loads(answer.content)
                    return info
                last[node.name] = f"{answer.status_code} {answer.text[:200]}"
            await asyncio.sleep(0.2)
        answers = "; ".join(f"{name}: {said}" for name, said in sorted(last.items()))
        self.failures.append(f"no node answered {feed}'s head at the quiesce ({answers})")
        return None

    async def aclose(self) -> None:
        """Stop everything, however the run ended."""
        self.stop_followers.set()
        self.creating.clear()
        try:
            for task in self.tasks:
                task.cancel()
            if self.tasks:
                await asyncio.wait(self.tasks, timeout=5)
            for publisher in self.publishers:
                await publisher.aclose()
            await self.http.aclose()
        finally:
            for process in [*self.nodes, *self.redis.servers]:
                process.kill()

    # ------------------------------------------------------------ the report

    def report(self, result: Verdict, elapsed: float) -> dict[str, Any]:
        args = self.args
        kinds = Counter(fault.kind for fault in self.faults)
        ws = sum(1 for r in self.records if r.transport == "ws")
        tallies = [dataclasses.asdict(p.tally) for p in self.publishers]
        publishing = {key: sum(t[key] for t in tallies) for key in tallies[0]} if tallies else {}
        ends: Counter[str] = Counter()
        for follower in self.followers:
            ends.update(follower.ends)
        return {
            "passed": result.passed,
            "redis": self.redis.kind,
            "persistent": not args.no_persistence,
            "nodes": args.nodes,
            "clients": len(self.records),
            "ws": ws,
            "sse": len(self.records) - ws,
            "feeds": self.feeds,
            "seed": args.seed,
            "duration": args.duration,
            "elapsed": round(elapsed, 1),
            "published": result.published,
            "delivered": result.delivered,
            "faults": len(self.faults),
            "fault_kinds": {kind: kinds.get(kind, 0) for kind in KINDS},
            "missing": result.missing,
            "duplicated": result.duplicated,
            "out_of_order": result.out_of_order,
            "mismatched": result.mismatched,
            "unacknowledged": result.unacknowledged,
            "resets": result.resets,
            "lost_history_resets": result.lost_history_resets,
            "behind_history_resets": result.behind_history_resets,
            "unexplained_resets": result.unexplained_resets,
            "skipped_by_resets": result.skipped,
            "connections": sum(r.connections for r in self.records),
            "connection_ends": dict(ends),
            "publishing": publishing,
            "failures": result.failures,
            "anomalies": [dataclasses.asdict(a) for a in result.anomalies[:200]],
            "resets_seen": [dataclasses.asdict(x) for r in self.records for x in r.resets][:200],
            "fault_log": [dataclasses.asdict(f) for f in self.faults],
            "behind": self.behind[:200],
            "silent_streams": self.silences()[:200],
            "reader_lag": {
                "readers": sum(1 for f in self.followers if f.lag),
                "max": round(max((f.lag for f in self.followers), default=0.0), 1),
            },
            "node_ports": {node.port: node.name for node in self.nodes},
        }


def verdict_line(report: dict[str, Any]) -> str:
    kinds = " ".join(f"{kind}={count}" for kind, count in report["fault_kinds"].items())
    on = "" if report["redis"] == "redis" else f" on={report['redis']}"
    on += "" if report["persistent"] else " persistence=none"
    return (
        f"chaos: {'PASS' if report['passed'] else 'FAIL'}{on} nodes={report['nodes']} "
        f"clients={report['clients']} (ws={report['ws']} sse={report['sse']}) "
        f"published={report['published']} delivered={report['delivered']} "
        f"faults={report['faults']} ({kinds}) missing={report['missing']} "
        f"duplicated={report['duplicated']} out_of_order={report['out_of_order']} "
        f"mismatched={report['mismatched']} unacknowledged={report['unacknowledged']} "
        f"resets={report['resets']} (lost-history resets={report['lost_history_resets']}) "
        f"in {report['elapsed']:.0f} s"
    )


async def soak(args: argparse.Namespace) -> int:
    root = Path(tempfile.mkdtemp(prefix="livepush-chaos-"))
    run = Soak(args, root)
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None
    for sig in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C too, even where it was ignored
        loop.add_signal_handler(sig, main.cancel)
    try:
        await run.setup()
        quiesce = max(15.0, min(60.0, args.duration * 0.25))
        await run.chaos(until=run.deadline - quiesce, planned=args.duration - quiesce - 5)
        ends = await run.quiesce()
        for follower in run.followers:
            follower.cut()
        result = verdict(run.records, run.accepted, ends, persistent=not args.no_persistence)
        result.failures += run.failures
        silent = run.silences()
        if silent:
            result.failures.append(
                f"{len(silent)} open connections got nothing for over {SILENT_AFTER:.0f} s "
                f"(nothing unread) while other readers had their next entry, e.g. {silent[0]}"
            )
        refused = sum(r.counts["refused"] for r in run.records)
        if refused:
            result.failures.append(f"readers' subscriptions refused {refused} times")
        report = run.report(result, run.clock())
        # Not part of the verdict (which judges what readers saw), but never hidden.
        report["tracebacks"] = {
            process.name: found
            for process in [*run.nodes, *run.redis.servers]
            if (found := process.tracebacks())
        }
        lagged = report["reader_lag"]
        if lagged["readers"]:
            print(
                f"chaos: {lagged['readers']} readers fell over {SILENT_AFTER:.0f} s behind "
                f"with bytes unread in their sockets (the longest {lagged['max']:.0f} s): "
                "the soak's own process did not keep up, and their resets behind history "
                "are its doing; fewer --clients or a lower --rate measure livepush instead",
                file=sys.stderr,
            )
        for name, found in report["tracebacks"].items():
            print(
                f"chaos: {name} logged {len(found)} tracebacks (whole in --json), the last "
                f"ending: {found[-1].splitlines()[-1]}",
                file=sys.stderr,
            )
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1))  # noqa: ASYNC240 (once, small)
        if not result.passed:
            for line in result.failures[:30]:
                print(f"chaos: FAIL: {line}", file=sys.stderr)
            for anomaly in result.anomalies[:30]:
                print(f"chaos: anomaly: {anomaly}", file=sys.stderr)
            for line in run.behind[:30]:
                print(f"chaos: {line}", file=sys.stderr)
            for process in [*run.nodes, *run.redis.servers]:
                for line in process.complaints():
                    print(f"chaos: {process.name} log: {line}", file=sys.stderr)
            for fault in run.faults:
                print(f"chaos: fault: {fault}", file=sys.stderr)
        print(verdict_line(report), flush=True)
        return 0 if result.passed else 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(run.aclose())
        if args.keep:
            print(f"chaos: logs kept in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=110.0, help="seconds in all (hard max)")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--clients", type=int, default=300, help="readers")
    parser.add_argument("--sse-share", type=float, default=1 / 3, help="readers on SSE")
    parser.add_argument("--publishers", type=int, default=4)
    parser.add_argument("--rate", type=float, default=20.0, help="entries/s, all publishers")
    parser.add_argument("--seed", type=int, default=1, help="the fault schedule's seed")
    parser.add_argument("--cluster", action="store_true", help="on a 3-primary Redis Cluster")
    parser.add_argument("--no-faults", action="store_true", help="traffic only")
    parser.add_argument(
        "--no-persistence",
        action="store_true",
        help="Redis without AOF: a Redis kill loses history, which must come as a reset",
    )
    parser.add_argument("--history-size", type=int, default=1000, help="the nodes' --history-size")
    parser.add_argument("--json", metavar="PATH", help="write the full report here")
    parser.add_argument("--keep", action="store_true", help="keep the logs' temp directory")
    args = parser.parse_args(argv)
    if not 30 <= args.duration <= MAX_DURATION:
        parser.error(f"--duration must be within 30..{MAX_DURATION:.0f} s")
    if args.nodes < 1 or args.clients < 1 or args.publishers < 1 or args.rate <= 0:
        parser.error("--nodes, --clients, --publishers and --rate must be positive")
    if not 0 <= args.sse_share <= 1:
        parser.error("--sse-share is a fraction")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.cluster and (reason := cluster_unavailable()):
        print(f"chaos: cluster mode not available: {reason}", flush=True)
        return 2
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 20_000), hard))
    try:
        return uvloop.run(soak(args))  # the readers' frames are parsed faster on uvloop
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("chaos: interrupted; everything stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
