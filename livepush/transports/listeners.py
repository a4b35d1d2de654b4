"""One listening socket per worker process, so that `--workers N` shares readers evenly.

uvicorn's supervisor binds one socket and every worker accepts from it. The kernel
then hands each connection to whichever worker is waiting, not evenly: with 100,000
readers on six workers of 20,000 descriptors each, one worker reached 20,000 while
the others held 14,500 to 18,000. A worker at its open-files limit fails accept() with
EMFILE, and libuv (under uvloop) then accepts and closes every connection waiting on
the socket (`uv__emfile_trick`), the ones its siblings had room for included.

Here each worker listens on its own socket, bound to the same address with
SO_REUSEPORT: the kernel spreads connections over the workers' sockets by a hash of
the client's address and port, so each worker gets its even share (within a few per
cent at thousands of connections), and a worker at its limit closes only connections
that were its own (they reconnect, from another port, hashed afresh).

The supervisor's socket (`WorkerListener`) is bound but never listens, so it never
takes a connection: it holds the port, and multiprocessing, pickling it for each worker
uvicorn spawns (at start, at a restart, when one died), gets `worker_socket()`'s fresh
socket in the worker instead of a copy of the one socket.

The cost: connections a worker had not yet accepted when it stops listening (a
restart, SIGTERM) are reset instead of waiting for a sibling (Linux's
net.ipv4.tcp_migrate_req = 1 hands them over); the clients reconnect.
"""

from __future__ import annotations

import logging
import socket
import sys
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

log = logging.getLogger("uvicorn.error")


def _bound(sock: socket.socket, address: tuple[Any, ...]) -> socket.socket:
    """`sock` bound to `address`, which other sockets of this user may share."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    sock.set_inheritable(True)
    return sock


def worker_socket(family: int, address: tuple[Any, ...]) -> socket.socket:
    """A socket bound to `address` beside the supervisor's and its siblings' (uvicorn's
    worker calls listen() on it)."""
    return _bound(socket.socket(family, socket.SOCK_STREAM), address)


class WorkerListener(socket.socket):
    """The supervisor's bound socket: pickled for a worker, it becomes that worker's own."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (worker_socket, (self.family, self.getsockname()))


class Config(uvicorn.Config):
    """uvicorn's Config whose socket for `--workers N` is a `WorkerListener`."""

    def bind_socket(self) -> socket.socket:
        if self.workers == 1 or self.uds is not None or self.fd is not None:
            return super().bind_socket()
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        try:
            sock = _bound(WorkerListener(family, socket.SOCK_STREAM), (self.host, self.port))
        except OSError as exc:
            log.error(exc)
            sys.exit(STARTUP_FAILURE)
        where = f"[{self.host}]" if family == socket.AF_INET6 else self.host
        log.info(
            "Uvicorn running on http://%s:%d, one listening socket per worker "
            "(Press CTRL+C to quit)",
            where,
            sock.getsockname()[1],
        )
        return sock


def run(config: Config) -> None:
    """uvicorn.run's path for an import string, with `config`'s sockets."""
    server = uvicorn.Server(config=config)
    try:
        if config.workers > 1:
            Multiprocess(config, sockets=[config.bind_socket()]).run()
        else:
            server.run()
    except KeyboardInterrupt:
        pass
    if config.workers == 1 and not server.started:
        sys.exit(STARTUP_FAILURE)
