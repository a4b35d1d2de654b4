"""`livepush publish` and `livepush tail` as real processes against real servers."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson

from livepush.commands import line, printable
from tests.support import RedisServer, Server, apost

LIVEPUSH = str(Path(sys.executable).parent / "livepush")  # .venv/bin/livepush
TIMEOUT = 60.0  # a bound for a loaded machine (backoff after a restart grows with its downtime)


# Runs argv[1:] as a terminal's foreground job runs it: Ctrl-C (SIGINT) not ignored. A
# suite started in the background (`./dev test &`, or by a tool) inherits SIGINT and
# SIGQUIT ignored, as a shell sets them for a background job, and passes that on to
# every process it starts; a `livepush tail` so started rightly ignores Ctrl-C, as
# Python does, and these tests would wait for it in vain (seen in two suite runs:
# the process state showed SIGINT in SigIgn). SIG_DFL survives the exec.
IN_THE_FOREGROUND = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)


def environment(**extra: str) -> dict[str, str]:
    """This environment without LIVEPUSH_TOKEN (each test says which token it sends)."""
    env = {k: v for k, v in os.environ.items() if k != "LIVEPUSH_TOKEN"}
    return {**env, **extra}


async def livepush(
    *args: str, stdin: bytes = b"", env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    """Run `livepush ARGS` to its end: exit code, stdout, stderr."""
    proc = await asyncio.create_subprocess_exec(
        LIVEPUSH,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env or environment(),
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), TIMEOUT)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


class Tail:
    """`livepush tail` as a real process: its stdout lines as they come, stderr kept."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.stderr: list[str] = []
        self.reading = asyncio.create_task(self._read_stderr())

    @classmethod
    async def start(cls, *args: str) -> Tail:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            IN_THE_FOREGROUND,
            LIVEPUSH,
            "tail",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=environment(),
        )
        return cls(proc)

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self.stderr.append(line.decode())

    async def line(self) -> str:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), TIMEOUT)
        assert line, f"tail ended: {''.join(self.stderr)}"
        return line.decode()

    async def said(self, text: str) -> None:
        """Wait until a line on stderr holds `text`."""
        deadline = asyncio.get_running_loop().time() + TIMEOUT
        while not any(text in line for line in self.stderr):
            assert asyncio.get_running_loop().time() < deadline, f"tail never said {text!r}"
            assert not self.reading.done(), f"tail ended: {''.join(self.stderr)}"
            await asyncio.sleep(0.01)

    async def events(self, until_seq: int) -> list[dict[str, Any]]:
        """JSON lines up to the one with seq `until_seq`."""
        found: list[dict[str, Any]] = []
        while not found or found[-1].get("seq") != until_seq:
            found.append(orjson.loads(await self.line()))
        return found

    async def stop(self, sig: int = signal.SIGINT) -> int:
        """Send `sig`; the exit code, once the process has closed its socket and ended."""
        self.proc.send_signal(sig)
        try:
            code = await asyncio.wait_for(self.proc.wait(), TIMEOUT)
        except TimeoutError:
            # Say what the process was doing and how it held the signal, then end it.
            state = process_state(self.proc.pid)
            self.proc.kill()
            await self.proc.wait()
            await self.reading
            stderr = "".join(self.stderr)[-2000:]
            raise AssertionError(
                f"tail still ran {TIMEOUT:.0f} s after signal {sig}: {state}; stderr: {stderr!r}"
            ) from None
        await self.reading
        return code


def process_state(pid: int) -> str:
    """A running process's state, signal masks and threads, as /proc tells them."""
    wanted = ("State", "Threads", "SigBlk", "SigIgn", "SigCgt", "ShdPnd", "SigPnd")
    proc = Path(f"/proc/{pid}")
    try:
        lines = (proc / "status").read_text().splitlines()
        wchan = (proc / "wchan").read_text()
    except OSError as error:
        return f"unreadable ({error})"
    fields = [line.replace("\t", " ") for line in lines if line.split(":")[0] in wanted]
    return ", ".join([*fields, f"wchan: {wchan}"])


async def test_publish_then_tail_json_sees_each_entry_as_received_plus_its_epoch(
    server: Server,
) -> None:
    url = ("--url", server.base_url)
    code, out, err = await livepush(
        "publish", *url, "--token", server.token, "news", "--title", "FIRST", "line one\nline two"
    )
    assert (code, err) == (0, "")
    assert re.fullmatch(r"id=[0-9a-z]{16} seq=1\n", out)
    token = ("--token", server.token)
    code, out, _ = await livepush(
        "publish", *url, *token, "--pinned", "--json", "news", "-", stdin=b"from stdin\n"
    )
    stored = orjson.loads(out)
    assert (code, stored["seq"], stored["body"], stored["pinned"]) == (0, 2, "from stdin", True)

    tail = await Tail.start(*url, "news", "--since", "0", "--json")
    first, second = await tail.events(until_seq=2)
    async with httpx.AsyncClient() as http:
        epoch = (await http.get(f"{server.base_url}/v1/feeds/news")).json()["epoch"]
    assert (first["type"], first["feed"], first["seq"], first["epoch"]) == (
        "entry.created",
        "news",
        1,
        epoch,
    )
    assert (first["entry"]["title"], first["entry"]["body"]) == ("FIRST", "line one\nline two")
    assert second == {
        "type": "entry.created",
        "feed": "news",
        "seq": 2,
        "entry": stored,
        "epoch": epoch,
    }
    # LIVEPUSH_TOKEN stands in for --token; the live entry reaches the running tail.
    code, _, _ = await livepush(
        "publish", *url, "news", "live", env=environment(LIVEPUSH_TOKEN=server.token)
    )
    assert code == 0
    (third,) = await tail.events(until_seq=3)
    assert third["entry"]["body"] == "live"
    assert await tail.stop(signal.SIGINT) == 0  # Ctrl-C ends tail cleanly
    assert "Traceback" not in "".join(tail.stderr)


async def test_tail_resumes_across_a_server_restart_each_entry_once_in_order(
    redis_server: RedisServer, start_server: Callable[..., Server]
) -> None:
    node, other = start_server(redis_server.url), start_server(redis_server.url)
    async with httpx.AsyncClient(timeout=10) as http:
        assert (await apost(http, node, "restart", {"body": "before"})).status_code == 201
        tail = await Tail.start("--url", node.base_url, "restart", "--since", "0", "--json")
        assert [e["seq"] for e in await tail.events(until_seq=1)] == [1]
        node.stop()  # drains: tail's socket is closed with 1012, then nobody answers
        for body in ("while down 1", "while down 2"):
            assert (await apost(http, other, "restart", {"body": body})).status_code == 201
        node.start()  # the same port, the same Redis
        assert (await apost(http, node, "restart", {"body": "after"})).status_code == 201
        events = await tail.events(until_seq=4)
    assert [(e["seq"], e["entry"]["body"]) for e in events] == [
        (2, "while down 1"),
        (3, "while down 2"),
        (4, "after"),
    ]
    assert len({e["epoch"] for e in events}) == 1
    assert await tail.stop(signal.SIGTERM) == 0
    stderr = "".join(tail.stderr)
    assert "reconnecting" in stderr
    assert "reset" not in stderr


async def test_tail_shows_one_line_per_event_and_reloads_the_snapshot_on_reset(
    server: Server,
) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        await apost(http, server, "view", {"body": "kept", "title": "OLD"})
        tail = await Tail.start("--url", server.base_url, "view", "--since", "0")
        assert "  1  created   OLD kept" in await tail.line()
        server.stop()
        server.start()  # in-process broker: a new, empty life of the feed
        await tail.said("view reloaded: 0 entries up to seq 0 of epoch")
        entry = {"title": "NEW\x1b[2J", "body": "first line\x07\nsecond line"}
        assert (await apost(http, server, "view", entry)).status_code == 201
        line = await tail.line()
        # seq 1 of the new life, title and first line only, control characters shown
        # escaped (an ESC sequence could clear or retitle the reader's terminal).
        assert line.endswith("      1  created   NEW\\x1b[2J first line\\x07\n")
        assert "\x1b" not in line
    assert await tail.stop() == 0
    assert "reloading the snapshot of view" in "".join(tail.stderr)


async def test_a_token_the_server_refuses_exits_1_naming_the_spec_code(server: Server) -> None:
    code, out, err = await livepush("publish", "--url", server.base_url, "--token", "no", "f", "x")
    assert (code, out) == (1, "")
    assert err.startswith("livepush: forbidden (403)") or err.startswith("livepush: unauthorized")
    code, _, err = await livepush("publish", "--url", server.base_url, "f", "x")  # no token
    assert code == 1
    assert err.startswith("livepush: unauthorized (401)")


async def test_a_refused_subscription_exits_1_naming_the_spec_code(server: Server) -> None:
    code, _, err = await livepush("tail", "--url", server.base_url, "Not-A-Feed")
    assert code == 1
    assert "livepush: bad_feed" in err


async def test_usage_errors_exit_2() -> None:
    for args in (
        ("publish",),
        ("tail", "demo", "--since", "soon"),
        ("tail", "demo", "--bogus"),
        ("publish", "demo", "one", "two"),
        ("publish", "--url", "ftp://example.com", "demo", "x"),
    ):
        code, _, err = await livepush(*args)
        assert code == 2, args
        assert "livepush" in err


def test_a_line_is_cut_to_the_terminal_width() -> None:
    shown = line("2024-11-14T10:02:03.000Z", 7, "created", "word " * 50, width=60)
    assert len(shown) == 60
    assert shown.endswith("word…")
    assert line(None, 7, "created", "short", width=60).endswith("      7  created   short")


def test_control_and_direction_characters_are_shown_escaped_joiners_kept() -> None:
    # ESC sequences (clear, retitle), a bell, and a right-to-left override that would
    # reorder what the terminal shows; a zero-width joiner inside an emoji is text.
    text = "a\x1b]0;owned\x07b\x1b[2J\u202etxt.exe \U0001f469\u200d\U0001f52c"
    assert printable(text) == (
        "a\\x1b]0;owned\\x07b\\x1b[2J\\u202etxt.exe \U0001f469\u200d\U0001f52c"
    )
