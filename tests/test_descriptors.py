"""Out of file descriptors: new connections are closed at once, said in the log once,
and the node takes connections again when descriptors free up."""

from __future__ import annotations

import base64
import os
import resource
import socket
import subprocess
import sys

import pytest

from livepush.descriptors import has_room
from tests.support import HOST, Server, wait_until

LIMIT = 80  # open files for the server process: a few dozen sockets
# Runs the command after it with LIMIT open files (soft and hard), as `prlimit
# --nofile=LIMIT` would, with nothing but Python.
UNDER_LIMIT = [
    sys.executable,
    "-c",
    "import os, resource, sys; "
    f"resource.setrlimit(resource.RLIMIT_NOFILE, ({LIMIT}, {LIMIT})); "
    "os.execv(sys.argv[1], sys.argv[1:])",
]


def websocket(server: Server) -> socket.socket | None:
    """A subscribed WebSocket on a raw socket, or None when the server closed it at once."""
    sock = socket.create_connection((HOST, server.port), timeout=5)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /v1/ws?feed=fd HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    try:
        response = sock.recv(4096)
    except ConnectionResetError:
        response = b""
    if not response:
        sock.close()
        return None
    assert response.startswith(b"HTTP/1.1 101"), response[:100]
    return sock


def test_out_of_descriptors_refuses_cleanly_logs_once_and_recovers() -> None:
    server = Server().start(prefix=UNDER_LIMIT)
    held: list[socket.socket] = []
    try:
        refused = 0
        for _ in range(2 * LIMIT):  # bounded: the limit is reached well before
            sock = websocket(server)
            if sock is None:
                refused += 1
                if refused == 3:
                    break
            else:
                held.append(sock)
        assert refused == 3, "no connection was refused below twice the limit"
        assert 0 < len(held) < LIMIT
        wait_until(lambda: "open files at the limit" in server.log.read_text(), 30, "the log")
        for sock in held:
            sock.close()
        held.clear()
        wait_until(lambda: "below the limit again" in server.log.read_text(), 30, "recovery")
        assert server.log.read_text().count("open files at the limit") == 1  # not per refusal
        again = websocket(server)
        assert again is not None, "still refused after descriptors freed up"
        again.close()
    finally:
        for sock in held:
            sock.close()
        server.stop()


def test_room_for_more_descriptors_is_tried_not_counted() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    held = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (held + 5, hard))
    try:
        assert has_room(3)
        assert not has_room(10)  # five free at most: the tenth open fails
        assert has_room(3)  # what it opened to try was closed again
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.parametrize("cap", [None, 1000])
def test_the_descriptor_table_is_grown_to_the_limit_at_start_up(cap: int | None) -> None:
    # Grown by the kernel as sockets come, each doubling stalled an accept() for an
    # RCU grace period (7-22 ms under perf trace, at 256, 512, ..., 8,192): grown once
    # before serving, it never grows under load. The kernel shows the table's size as
    # FDSize. A limit above TABLE_CAP (here lowered to 1,000) grows it to the cap only.
    limit = min(5000, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    script = (
        "import resource, sys\n"
        "from livepush import descriptors\n"
        "hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), hard))\n"
        "if sys.argv[2] != 'None':\n"
        "    descriptors.TABLE_CAP = int(sys.argv[2])\n"
        "def size():\n"
        "    with open('/proc/self/status') as status:\n"
        "        return next(int(l.split()[1]) for l in status if l.startswith('FDSize:'))\n"
        "before = size()\n"
        "print(before, descriptors.reserve_table(), size())\n"
    )
    run = [sys.executable, "-c", script, str(limit), str(cap)]
    result = subprocess.run(run, capture_output=True, text=True, check=True)
    before, top, after = map(int, result.stdout.split())
    grown_to = limit if cap is None else cap
    assert before < grown_to - 1  # a new process starts with a small table
    assert top == grown_to - 1
    assert after >= grown_to  # the kernel's table holds the top slot now
    if cap is not None:
        assert after < limit  # not grown to the limit past the cap
