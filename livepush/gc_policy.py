"""GcPolicy: keeps Python's full garbage collections short, so none stalls a fan-out."""

from __future__ import annotations

import gc


class GcPolicy:
    """Keeps Python's full garbage collections short, so none stalls a fan-out.

    A full collection walks every tracked object: with 10,000 sockets that is a few
    hundred thousand objects and a pause of hundreds of milliseconds, in the middle
    of deliveries. Every FREEZE_SECONDS the young generations are collected and the
    survivors frozen (gc.freeze): full collections then only walk what is newer.
    In a connect storm ten seconds is too long: thousands of new sockets would be
    walked again by every full collection the storm triggers (about 40 µs of a
    connection's set-up), so the young objects are also frozen after every
    FREEZE_CONNECTIONS new connections (gc.freeze itself costs next to nothing).
    Its cost: cyclic garbage among frozen objects waits until the next thaw, every
    THAW_SECONDS, when one full collection frees it. Closed sockets leave none: their
    cycles are broken when they close.
    """

    FREEZE_SECONDS = 10.0
    THAW_SECONDS = 600.0
    FREEZE_CONNECTIONS = 500

    def __init__(self) -> None:
        self._since_thaw = 0.0
        self._opened = 0

    def opened(self) -> None:
        """A connection opened."""
        self._opened += 1
        if self._opened >= self.FREEZE_CONNECTIONS:
            self._opened = 0
            gc.freeze()

    def tick(self) -> None:
        self._since_thaw += self.FREEZE_SECONDS
        if self._since_thaw >= self.THAW_SECONDS:
            self._since_thaw = 0.0
            gc.unfreeze()
            return  # the next automatic full collection frees what was held
        gc.collect(1)
        gc.freeze()
