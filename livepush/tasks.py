"""The tasks one component owns: started, logged if they fail, cancelled and awaited at close."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from livepush.errors import BrokerUnavailable

log = logging.getLogger("livepush.tasks")


class Tasks:
    """Every task of one owner (the hub): nothing runs that nobody will cancel."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run `coro` as a task of this owner: cancelled and awaited by aclose()."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        # A broker outage reaches whoever awaits the task (a shared read's joiners).
        if error is not None and not isinstance(error, BrokerUnavailable):
            log.error("%s task failed", self.name, exc_info=error)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
